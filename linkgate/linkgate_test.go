package linkgate

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// hangGuard bounds every wait in these tests; it never measures speed.
const hangGuard = 10 * time.Second

// dispatcher is a stack.NetworkDispatcher that is only compared.
type dispatcher struct{ name string }

func (*dispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
func (*dispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}

// owner records its hooks in order, checks that no two overlap, and
// signals each Finish.
type owner struct {
	mu sync.Mutex
	// +checklocks:mu
	log      []string
	running  atomic.Int32
	overlaps atomic.Int32
	finished chan struct{}
}

func newOwner() *owner { return &owner{finished: make(chan struct{}, 16)} }

func (o *owner) hook(name string) func() {
	return func() {
		if o.running.Add(1) != 1 {
			o.overlaps.Add(1)
		}
		o.mu.Lock()
		o.log = append(o.log, name)
		o.mu.Unlock()
		o.running.Add(-1)
		if name == "finish" {
			o.finished <- struct{}{}
		}
	}
}

func (o *owner) hooks() Hooks {
	return Hooks{Start: o.hook("start"), Stop: o.hook("stop"), Finish: o.hook("finish")}
}

func (o *owner) events() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.log...)
}

func (o *owner) waitFinish(t *testing.T) {
	t.Helper()
	select {
	case <-o.finished:
	case <-time.After(hangGuard):
		t.Fatal("Finish never ran")
	}
}

func TestAttachSwapsWithoutRestart(t *testing.T) {
	o := newOwner()
	g := New(o.hooks())
	assert.False(t, g.IsAttached())
	assert.Nil(t, g.Enter(), "a new gate is closed")

	a, b := &dispatcher{"a"}, &dispatcher{"b"}
	g.Attach(a)
	g.Attach(b)
	require.True(t, g.IsAttached())
	d := g.Enter()
	require.Equal(t, stack.NetworkDispatcher(b), d)
	g.Leave()
	assert.Equal(t, stack.NetworkDispatcher(b), g.Dispatcher())
	assert.Equal(t, []string{"start"}, o.events(), "a second Attach only swaps the dispatcher")
}

func TestDetachWhenIdleFinishesAtOnce(t *testing.T) {
	o := newOwner()
	g := New(o.hooks())
	g.Attach(&dispatcher{})
	g.Attach(nil)
	assert.Equal(t, []string{"start", "stop", "finish"}, o.events())
	assert.False(t, g.Stopping())
	assert.Nil(t, g.Enter())
	g.Attach(nil) // detaching twice does nothing more
	assert.Len(t, o.events(), 3)
}

// TestDetachNeverWaitsForADelivery: with a delivery inside netstack,
// Attach(nil) returns at once, Stopping says so, and Finish runs when the
// delivery leaves.
func TestDetachNeverWaitsForADelivery(t *testing.T) {
	o := newOwner()
	g := New(o.hooks())
	g.Attach(&dispatcher{})
	require.NotNil(t, g.Enter())

	g.Attach(nil) // would hang here if it waited
	assert.Equal(t, []string{"start", "stop"}, o.events())
	assert.True(t, g.Stopping())
	assert.Nil(t, g.Enter(), "closed while stopping")

	g.Leave()
	o.waitFinish(t)
	require.True(t, g.Close())
	assert.False(t, g.Stopping())
	assert.Equal(t, []string{"start", "stop", "finish"}, o.events())
}

// TestReattachWhileStopping: an Attach during a background stop lets
// deliveries through at once, and Start follows the Finish.
func TestReattachWhileStopping(t *testing.T) {
	o := newOwner()
	g := New(o.hooks())
	g.Attach(&dispatcher{"a"})
	require.NotNil(t, g.Enter())
	g.Attach(nil)
	b := &dispatcher{"b"}
	g.Attach(b)
	assert.Equal(t, stack.NetworkDispatcher(b), g.Dispatcher())
	o.waitFinish(t) // the gate opened: the background stop goes on
	g.Leave()
	require.True(t, g.Close()) // waits for the restart, then stops again
	assert.Equal(t, []string{"start", "stop", "finish", "start", "stop", "finish"}, o.events())
}

// TestCloseWaitsForTheBackgroundStop: Close returns only after Finish, and
// the gate stays closed after it.
func TestCloseWaitsForTheBackgroundStop(t *testing.T) {
	o := newOwner()
	g := New(o.hooks())
	g.Attach(&dispatcher{})
	require.NotNil(t, g.Enter())
	g.Attach(nil)

	closed := make(chan bool)
	go func() { closed <- g.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned with a delivery inside netstack")
	case <-o.finished:
		t.Fatal("Finish ran with a delivery inside netstack")
	default:
	}
	g.Leave()
	select {
	case ok := <-closed:
		require.True(t, ok)
	case <-time.After(hangGuard):
		t.Fatal("Close never returned")
	}
	assert.Equal(t, []string{"start", "stop", "finish"}, o.events())
	assert.False(t, g.Close(), "closed twice")
	g.Attach(&dispatcher{})
	assert.False(t, g.IsAttached(), "attached after Close")
}

// TestUnderTraffic: deliveries from several goroutines while the gate is
// attached, detached and re-attached; no delivery gets through a closed
// gate, hooks never overlap, and Close ends it all.
func TestUnderTraffic(t *testing.T) {
	o := newOwner()
	o.finished = make(chan struct{}, 1<<16)
	g := New(o.hooks())
	a := &dispatcher{}
	g.Attach(a)

	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := 0; i < 1<<20 && !stop.Load(); i++ {
				if d := g.Enter(); d != nil {
					assert.Equal(t, stack.NetworkDispatcher(a), d)
					g.Leave()
				}
			}
		})
	}
	for range 2000 {
		g.Attach(nil)
		g.Attach(a)
	}
	require.True(t, g.Close())
	stop.Store(true)
	wg.Wait()
	assert.Zero(t, o.overlaps.Load(), "hooks overlapped")
	ev := o.events()
	require.NotEmpty(t, ev)
	assert.Equal(t, "finish", ev[len(ev)-1])
	assert.Zero(t, g.inflight.Load())
}
