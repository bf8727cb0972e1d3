// Package linkgate is the lifecycle guard of a link endpoint that delivers
// into netstack: deliveries pass through a Gate to the dispatcher the
// endpoint is attached to, and detaching never waits for a delivery that
// is inside netstack.
//
// netstack calls a link endpoint's Attach(nil) and Wait while holding its
// own lock (Stack.Destroy, Stack.RemoveNIC), and a packet on its way in may
// be waiting for that lock (a reset's route lookup). An endpoint that
// stopped its goroutines, or detached the endpoint below it, by waiting
// for them would wait for that packet and never return. A Gate stops at
// once when nothing is inside netstack; otherwise it finishes the stop on a
// goroutine of its own as soon as the last delivery is out, and Close,
// which netstack calls without its lock, waits for that. gVisor's
// link/nested forwards Attach and Wait as they are and has no such guard.
package linkgate

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Hooks are what a Gate's owner does at each step of its lifecycle. No two
// hooks run at once, and none runs inside a delivery. Start and Stop run
// with the Gate's lifecycle lock held, within Attach or Close; Finish too
// when it runs at once, but a Finish in the background runs without it, so
// that what it waits for may itself be waiting for Attach. A nil hook does
// nothing.
type Hooks struct {
	// Start begins delivering: it starts the owner's goroutines, or
	// attaches the endpoint below it. It runs on the first Attach with a
	// dispatcher, and on the first after each stop.
	Start func()
	// Stop tells the owner's deliveries to end, for example by waking its
	// goroutines with a stop. It runs at once on Attach(nil) or Close,
	// with the gate already closed, and must not wait for a delivery.
	Stop func()
	// Finish completes a stop once no delivery is inside netstack, or the
	// gate was opened again (IsAttached tells): it waits for the owner's
	// goroutines, detaches the endpoint below, releases what was held. It
	// runs on the goroutine of Attach(nil) or Close when nothing was inside
	// netstack, else on a goroutine of the Gate's; Start follows it if an
	// Attach came meanwhile.
	Finish func()
}

// A Gate lets deliveries through to the dispatcher its owner, a link
// endpoint, is attached to, and runs the owner's Hooks as the endpoint is
// attached, detached and closed. Deliveries call Enter and Leave and never
// take a lock; the owner's Attach and Close call the Gate's.
type Gate struct {
	hooks Hooks

	d        atomic.Pointer[stack.NetworkDispatcher] // nil while closed
	inflight atomic.Int64                            // deliveries inside netstack, and a moment at Enter
	waiting  atomic.Int32                            // goroutines in waitIdle

	idleMu sync.Mutex
	// idleCond is on idleMu: inflight reached 0, or the gate opened.
	// +checklocks:idleMu
	idleCond sync.Cond

	mu sync.Mutex // the lifecycle lock: Attach, Close and the hooks
	// started is set from Start to the next Stop.
	// +checklocks:mu
	started bool
	// stopping is closed when a background Finish has run; nil if none
	// is pending.
	// +checklocks:mu
	stopping chan struct{}
	// restart asks the background Finish to run Start after it: an
	// Attach with a dispatcher came meanwhile.
	// +checklocks:mu
	restart bool
	// +checklocks:mu
	closed bool
}

// New returns a closed Gate that runs hooks.
func New(hooks Hooks) *Gate {
	g := &Gate{hooks: hooks}
	g.idleCond.L = &g.idleMu
	return g
}

// Enter returns the dispatcher to deliver to, or nil if the gate is
// closed. A non-nil return must be followed by Leave once the delivery is
// out of netstack.
func (g *Gate) Enter() stack.NetworkDispatcher {
	g.inflight.Add(1)
	if d := g.Dispatcher(); d != nil {
		return d
	}
	g.Leave()
	return nil
}

// Leave ends a delivery that Enter let in.
func (g *Gate) Leave() {
	if g.inflight.Add(-1) == 0 && g.waiting.Load() > 0 {
		g.wake()
	}
}

// Dispatcher returns the dispatcher deliveries go to, or nil while the
// gate is closed, without entering.
func (g *Gate) Dispatcher() stack.NetworkDispatcher {
	if d := g.d.Load(); d != nil {
		return *d
	}
	return nil
}

// IsAttached reports whether deliveries go through, as
// stack.LinkEndpoint.IsAttached.
func (g *Gate) IsAttached() bool { return g.d.Load() != nil }

// Attach is the owner's stack.LinkEndpoint.Attach. With a dispatcher, it
// opens the gate to d and runs Start if the owner is not started; if a
// stop is finishing in the background, Start runs after it. With nil, it
// closes the gate and runs Stop, then Finish at once if no delivery is
// inside netstack, else in the background as soon as none is. It never
// waits for a delivery. After Close, Attach with a dispatcher does
// nothing.
func (g *Gate) Attach(d stack.NetworkDispatcher) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if d == nil {
		g.detachLocked()
		return
	}
	if g.closed {
		return
	}
	g.d.Store(&d)
	if g.waiting.Load() > 0 {
		g.wake()
	}
	switch {
	case g.stopping != nil:
		g.restart = true
	case !g.started:
		g.started = true
		call(g.hooks.Start)
	}
}

// Stopping reports whether a stop is finishing in the background, waiting
// for a delivery inside netstack. The owner's Wait, which netstack calls
// holding its lock, then returns at once instead of waiting for goroutines
// that wait for that delivery.
func (g *Gate) Stopping() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stopping != nil
}

// Close closes the gate for good: Attach(nil), then it waits for a stop
// finishing in the background. It reports false if the gate was closed
// already. netstack calls a link endpoint's Close without its lock; a
// caller that holds that lock must not call Close.
func (g *Gate) Close() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	g.closed = true
	g.detachLocked()
	for g.stopping != nil {
		done := g.stopping
		g.mu.Unlock()
		<-done
		g.mu.Lock()
	}
	return true
}

// detachLocked is Attach(nil).
//
// +checklocks:g.mu
func (g *Gate) detachLocked() {
	g.d.Store(nil)
	g.restart = false
	if !g.started || g.stopping != nil {
		return
	}
	g.started = false
	call(g.hooks.Stop)
	// A delivery that enters from now on finds the gate closed, so once
	// inflight is 0 it stays 0 until the gate opens again.
	if g.inflight.Load() == 0 {
		call(g.hooks.Finish)
		return
	}
	done := make(chan struct{})
	g.stopping = done
	go g.finishLater(done)
}

// finishLater runs Finish once no delivery is inside netstack or the gate
// was opened again, then Start if an Attach asked for it meanwhile. While
// stopping is set no other hook runs, so Finish runs without the lock.
func (g *Gate) finishLater(done chan struct{}) {
	g.waitIdle()
	call(g.hooks.Finish)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.stopping = nil
	close(done)
	if g.restart && !g.closed {
		g.restart = false
		g.started = true
		call(g.hooks.Start)
	}
}

// waitIdle waits until no delivery is inside netstack, or the gate is
// open.
func (g *Gate) waitIdle() {
	g.waiting.Add(1)
	defer g.waiting.Add(-1)
	g.idleMu.Lock()
	defer g.idleMu.Unlock()
	for g.d.Load() == nil && g.inflight.Load() != 0 {
		g.idleCond.Wait()
	}
}

// wake wakes the goroutines in waitIdle.
func (g *Gate) wake() {
	g.idleMu.Lock()
	g.idleCond.Broadcast()
	g.idleMu.Unlock()
}

func call(f func()) {
	if f != nil {
		f()
	}
}
