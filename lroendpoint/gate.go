package lroendpoint

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// gate is the way from the engine into netstack. It holds the NIC while
// one is attached and counts the deliveries inside netstack, so that
// detaching can tell whether anything of ours is in there: netstack calls
// Attach(nil) and Wait while holding its own lock, which a delivery in
// flight may be waiting for, so nothing those calls wait for may be such
// a delivery.
type gate struct {
	d        atomic.Pointer[stack.NetworkDispatcher]
	locality atomic.Pointer[rxbatch.Locality] // d's, if it can tell; nil while closed
	inflight atomic.Int64                     // deliveries inside netstack, and a moment at entry
	waiting  atomic.Int32                     // goroutines in waitIdle

	mu   sync.Mutex
	cond sync.Cond // on mu: inflight reached 0, or the gate was opened
}

// init readies g, closed.
func (g *gate) init() { g.cond.L = &g.mu }

// enter returns the dispatcher to deliver to, or nil if the gate is
// closed. A non-nil return must be followed by leave.
func (g *gate) enter() stack.NetworkDispatcher {
	g.inflight.Add(1)
	if d := g.d.Load(); d != nil {
		return *d
	}
	g.leave()
	return nil
}

// leave ends a delivery that enter let in.
func (g *gate) leave() {
	if g.inflight.Add(-1) == 0 && g.waiting.Load() > 0 {
		g.wake()
	}
}

// wake wakes the goroutines in waitIdle.
func (g *gate) wake() {
	g.mu.Lock()
	g.cond.Broadcast()
	g.mu.Unlock()
}

// open lets deliveries through to d.
func (g *gate) open(d stack.NetworkDispatcher) {
	if l := rxbatch.LocalityOf(d); l != nil {
		g.locality.Store(&l)
	} else {
		g.locality.Store(nil)
	}
	g.d.Store(&d)
	if g.waiting.Load() > 0 {
		g.wake()
	}
}

// close stops new deliveries; those inside netstack go on.
func (g *gate) close() {
	g.d.Store(nil)
	g.locality.Store(nil)
}

// isOpen reports whether deliveries go through.
func (g *gate) isOpen() bool { return g.d.Load() != nil }

// idle reports whether no delivery is inside netstack. With the gate
// closed, an idle gate stays idle: a delivery that starts later finds it
// closed.
func (g *gate) idle() bool { return g.inflight.Load() == 0 }

// waitIdle waits until no delivery is inside netstack with the gate
// closed, and reports true, or until the gate is opened again, and
// reports false.
func (g *gate) waitIdle() bool {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	g.mu.Lock()
	defer g.mu.Unlock()
	for {
		if g.isOpen() {
			return false
		}
		if g.idle() {
			return true
		}
		g.cond.Wait()
	}
}
