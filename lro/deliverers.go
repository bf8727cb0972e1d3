package lro

import "sync/atomic"

// A goroutine that hands packets to netstack for an engine may come back
// into an engine before that call returns: netstack answers on a link
// endpoint that delivers synchronously (a loopback or pipe link, a channel
// drained inline), and the answer reaches an engine on the same goroutine.
// Such a goroutine must never wait on an engine: what it would wait for
// may be the lane it is itself delivering. deliverers records which
// goroutines are inside netstack on an engine's behalf, so that the few
// places that wait (room in a shard's queue, Flush) can tell.

// numDeliverers is the number of goroutines recorded at once. A goroutine
// that finds no free slot is counted in overflowDeliverers, and while it
// delivers no goroutine waits at all: the bound on a shard's queue is then
// exceeded rather than risk a wait on oneself.
const numDeliverers = 64

var (
	deliverers         [numDeliverers]atomic.Int64
	overflowDeliverers atomic.Int32
)

// enterDelivery records the calling goroutine as delivering and returns
// the slot to give to leaveDelivery.
func enterDelivery() int {
	id := goroutineID()
	if id == 0 {
		return -1 // IDs unknown here: mayWait always says no
	}
	h := int((uint64(id) * 0x9e3779b97f4a7c15) >> 58) // 6 bits: numDeliverers
	for i := range numDeliverers {
		j := (h + i) & (numDeliverers - 1)
		if deliverers[j].CompareAndSwap(0, id) {
			return j
		}
	}
	overflowDeliverers.Add(1)
	return numDeliverers
}

// leaveDelivery undoes the enterDelivery that returned slot.
func leaveDelivery(slot int) {
	switch {
	case slot < 0:
	case slot == numDeliverers:
		overflowDeliverers.Add(-1)
	default:
		deliverers[slot].Store(0)
	}
}

// mayWait reports whether the calling goroutine may wait on an engine:
// it is not inside netstack on an engine's behalf. It scans every slot, so
// it is called only where a wait is about to start.
func mayWait() bool {
	id := goroutineID()
	if id == 0 || overflowDeliverers.Load() != 0 {
		return false
	}
	for i := range deliverers {
		if deliverers[i].Load() == id {
			return false
		}
	}
	return true
}
