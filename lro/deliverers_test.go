package lro

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGoroutineID holds what the delivererSet relies on: an ID is positive,
// stable for a goroutine and distinct between goroutines alive at once.
// With -tags netlro_portablegoid it tests the portable reading on amd64.
func TestGoroutineID(t *testing.T) {
	self := goroutineID()
	require.Positive(t, self)
	require.Equal(t, self, goroutineID())

	const n = 16
	ids := make([]int64, n)
	var started, release sync.WaitGroup
	started.Add(n)
	release.Add(1)
	for i := range n {
		go func() {
			ids[i] = goroutineID()
			started.Done()
			release.Wait() // all n stay alive until every ID is read
		}()
	}
	started.Wait()
	release.Done()
	seen := map[int64]bool{self: true}
	for _, id := range ids {
		assert.Positive(t, id)
		assert.False(t, seen[id], "ID %d given twice", id)
		seen[id] = true
	}
}

// TestDelivererSet checks that a goroutine recorded as delivering may not
// wait, another may, and the overflow stops every wait.
func TestDelivererSet(t *testing.T) {
	var d delivererSet
	require.True(t, d.mayWait())
	slot := d.enter()
	require.False(t, d.mayWait(), "a delivering goroutine waits")
	other := make(chan bool)
	go func() { other <- d.mayWait() }()
	require.True(t, <-other, "a goroutine not delivering may wait")
	d.leave(slot)
	require.True(t, d.mayWait())

	for i := range d.slots {
		d.slots[i].Store(int64(-1 - i)) // every slot taken by someone else
	}
	slot = d.enter()
	require.Equal(t, numDeliverers, slot)
	go func() { other <- d.mayWait() }()
	require.False(t, <-other, "a goroutine waits while one is unrecorded")
	d.leave(slot)
	require.True(t, d.mayWait())
}
