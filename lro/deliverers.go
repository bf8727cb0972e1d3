package lro

import "sync/atomic"

// delivererSet records which goroutines are inside netstack on an engine's
// behalf, so that the few places that wait (room in a shard's queue,
// Flush) can tell a goroutine that must not wait.
//
// A goroutine that hands packets to netstack for an engine may come back
// into an engine before that call returns: netstack answers on a link
// endpoint that delivers synchronously (a loopback or pipe link, a channel
// drained inline), and the answer reaches an engine on the same goroutine.
// Such a goroutine must never wait on an engine: what it would wait for
// may be the lane it is itself delivering.
//
// It is the package's one piece of mutable state shared by every engine,
// and it must be: the engine a goroutine comes back into is often not the
// one it delivers for (two NICs joined by a pipe link each have their own
// engine), and a wait in the second engine on the first one's lane is the
// same deadlock.
type delivererSet struct {
	slots [numDeliverers]atomic.Int64 // goroutine IDs; 0 is a free slot
	// overflow counts goroutines that found no free slot. While one
	// delivers, no goroutine waits at all: the bound on a shard's queue is
	// then exceeded rather than risk a wait on oneself.
	overflow atomic.Int32
}

// numDeliverers is the number of goroutines recorded at once.
const numDeliverers = 64

// deliverers is the set every engine shares; see delivererSet.
var deliverers delivererSet

// enter records the calling goroutine as delivering and returns the slot
// to give to leave.
func (d *delivererSet) enter() int {
	id := goroutineID()
	h := int((uint64(id) * 0x9e3779b97f4a7c15) >> 58) // 6 bits: numDeliverers
	for i := range numDeliverers {
		j := (h + i) & (numDeliverers - 1)
		if d.slots[j].CompareAndSwap(0, id) {
			return j
		}
	}
	d.overflow.Add(1)
	return numDeliverers
}

// leave undoes the enter that returned slot.
func (d *delivererSet) leave(slot int) {
	if slot == numDeliverers {
		d.overflow.Add(-1)
		return
	}
	d.slots[slot].Store(0)
}

// mayWait reports whether the calling goroutine may wait on an engine: it
// is not inside netstack on an engine's behalf. It scans every slot, so it
// is called only where a wait is about to start.
func (d *delivererSet) mayWait() bool {
	if d.overflow.Load() != 0 {
		return false
	}
	id := goroutineID()
	for i := range d.slots {
		if d.slots[i].Load() == id {
			return false
		}
	}
	return true
}
