package csum

import (
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestChecksumNoOverread places buffers right before an inaccessible page, so
// any load past the end of buf (a full-width load on a short tail) faults.
func TestChecksumNoOverread(t *testing.T) {
	page := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, unix.Munmap(mem)) })
	require.NoError(t, unix.Mprotect(mem[page:], unix.PROT_NONE))
	for i := range page {
		mem[i] = byte(i*31 + 1)
	}
	forEachImpl(t, func(t *testing.T) {
		for n := 0; n <= 600; n++ {
			requireGVisor(t, mem[page-n:page], 0x4321)
		}
		requireGVisor(t, mem[:page], 0)
	})
}
