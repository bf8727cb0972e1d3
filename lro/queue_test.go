package lro

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	gsync "gvisor.dev/gvisor/pkg/sync"

	"github.com/netlro/netlro/internal/testpacket"
)

// testQueue is a deliveryQueue whose packets are numbered items; deliver
// records each number, and blocks on a number's gate while one is set.
// +checklocksalias:q.mu=mu
type testQueue struct {
	mu    gsync.Mutex
	q     deliveryQueue
	order sync.Map // lane -> *[]int, in delivery order
	gates sync.Map // item number -> chan struct{}, closed to let it go
	inMu  sync.Mutex
	// +checklocks:inMu
	got []int
}

func newTestQueue() *testQueue {
	tq := &testQueue{}
	tq.q.init(&tq.mu, func(it pending) {
		id := it.s.segs
		if g, ok := tq.gates.Load(id); ok {
			<-g.(chan struct{})
		}
		tq.inMu.Lock()
		tq.got = append(tq.got, id)
		tq.inMu.Unlock()
	})
	return tq
}

// item is packet number id of lane l; the queue owns no packet for it.
func item(id int, l uint8) pending { return pending{s: session{segs: id}, lane: l, owned: true} }

// gate makes item id block in deliver until the returned func is called.
func (tq *testQueue) gate(id int) (open func()) {
	c := make(chan struct{})
	tq.gates.Store(id, c)
	return func() { close(c) }
}

// produce reserves, pushes and runs items as an engine's producer does;
// it returns what a Flush would wait for.
func (tq *testQueue) produce(items ...pending) pushed {
	tq.mu.Lock()
	tq.q.reserve(len(items))
	p := tq.q.push(items, len(items), false)
	tq.mu.Unlock()
	tq.q.run(items, &p)
	return p
}

func (tq *testQueue) delivered() []int {
	tq.inMu.Lock()
	defer tq.inMu.Unlock()
	return append([]int(nil), tq.got...)
}

// waitUntil polls cond, for at most 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		runtime.Gosched()
	}
}

// TestQueueLanes: a packet whose lane another goroutine is delivering
// waits behind it and is delivered by that goroutine, in order; a packet
// of another lane goes at once, in parallel; a Flush's wait returns only
// once what it queued is delivered.
func TestQueueLanes(t *testing.T) {
	tq := newTestQueue()
	open := tq.gate(1)
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		tq.produce(item(1, 0)) // takes lane 0, blocks delivering 1
	}()
	waitUntil(t, "item 1 is being delivered", func() bool {
		tq.mu.Lock()
		defer tq.mu.Unlock()
		return tq.q.lanes[0].busy
	})
	p := tq.produce(item(2, 0), item(3, 1), item(4, 0))
	assert.Equal(t, []int{3}, tq.delivered(), "lane 1 went at once; lane 0 waits for item 1")
	assert.Equal(t, uint16(1), p.waits, "items 2 and 4 queued on lane 0")

	waited := make(chan struct{})
	go func() {
		defer close(waited)
		tq.q.wait(&p)
	}()
	open()
	<-aDone
	<-waited
	assert.Equal(t, []int{3, 1, 2, 4}, tq.delivered(), "lane 0 in the order produced")
	tq.mu.Lock()
	defer tq.mu.Unlock()
	assert.Zero(t, tq.q.undelivered)
	assert.Zero(t, tq.q.reserved)
	assert.False(t, tq.q.lanes[0].busy)
	assert.Empty(t, tq.q.lanes[0].items)
}

// TestQueueBound: a producer that would take the shard past queueLimit
// packets on their way waits until the lane's goroutine makes room.
func TestQueueBound(t *testing.T) {
	tq := newTestQueue()
	open := tq.gate(0)
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		tq.produce(item(0, 5))
	}()
	waitUntil(t, "item 0 is being delivered", func() bool {
		tq.mu.Lock()
		defer tq.mu.Unlock()
		return tq.q.lanes[5].busy
	})
	// One packet in hand; fill the rest of the bound behind it.
	for i := 1; i < queueLimit; i++ {
		tq.produce(item(i, 5))
	}
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		tq.produce(item(queueLimit, 6)) // another lane, but no room
	}()
	waitUntil(t, "the producer waits for room", func() bool {
		tq.mu.Lock()
		defer tq.mu.Unlock()
		return tq.q.waiters == 1
	})
	tq.mu.Lock()
	assert.Equal(t, queueLimit, tq.q.undelivered)
	tq.mu.Unlock()
	assert.Empty(t, tq.delivered())
	open()
	<-aDone
	<-bDone
	assert.Len(t, tq.delivered(), queueLimit+1)
}

// TestQueueNoWaitInsideDelivery: a goroutine that netstack calls back
// while it delivers (a link that delivers synchronously) never waits, not
// for room and not for a Flush, even for the lane it is delivering itself.
func TestQueueNoWaitInsideDelivery(t *testing.T) {
	tq := &testQueue{}
	var inner pushed
	reentered := false
	tq.q.init(&tq.mu, func(it pending) {
		tq.inMu.Lock()
		tq.got = append(tq.got, it.s.segs)
		tq.inMu.Unlock()
		if it.s.segs != 0 || reentered {
			return
		}
		reentered = true
		// The queue is full of this goroutine's own lane.
		tq.mu.Lock()
		tq.q.reserved += queueLimit
		tq.q.reserve(1)
		tq.q.reserved -= queueLimit
		inner = tq.q.push([]pending{item(1, 0)}, 1, false)
		tq.mu.Unlock()
		tq.q.wait(&inner) // item 1 is behind this very delivery
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tq.produce(item(0, 0))
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a goroutine inside a delivery waited on itself")
	}
	assert.Equal(t, []int{0, 1}, tq.delivered())
	assert.Equal(t, uint16(1), inner.waits, "item 1 was queued behind item 0")
}

// flowSegments returns n segments of flow f, mss bytes each.
func flowSegments(f, n, mss int) [][]byte {
	return testpacket.Segments(testpacket.TCP{SrcPort: uint16(10000 + f), DstPort: 80, Seq: 1},
		testpacket.Payload(uint64(f), n*mss), mss)
}

// orderChecker is a dispatcher that checks each flow's bytes arrive in
// order and whole, counts what is inside it at once, and can be slow.
type orderChecker struct {
	t  *testing.T
	mu sync.Mutex
	// +checklocks:mu
	next     map[uint16]uint32 // source port -> next sequence number
	bytes    atomic.Int64      // payload bytes delivered
	inside   atomic.Int32
	maxIn    atomic.Int32
	slowSpin int // Gosched calls per delivery, waiting for company
}

func newOrderChecker(t *testing.T, slowSpin int) *orderChecker {
	return &orderChecker{t: t, next: map[uint16]uint32{}, slowSpin: slowSpin}
}

func (c *orderChecker) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	n := c.inside.Add(1)
	for m := c.maxIn.Load(); n > m && !c.maxIn.CompareAndSwap(m, n); m = c.maxIn.Load() {
	}
	for i := 0; i < c.slowSpin && c.inside.Load() < 2; i++ {
		runtime.Gosched() // another deliverer, if any runs, gets in
	}
	b := testpacket.Bytes(pkt)
	tcp, payload, err := testpacket.Check(b)
	if assert.NoError(c.t, err) {
		port := tcp.SourcePort()
		c.mu.Lock()
		want, ok := c.next[port]
		if !ok {
			want = 1
		}
		assert.Equal(c.t, want, tcp.SequenceNumber(), "flow %d out of order", port)
		c.next[port] = tcp.SequenceNumber() + uint32(len(payload))
		c.mu.Unlock()
		c.bytes.Add(int64(len(payload)))
	}
	c.inside.Add(-1)
}

func (c *orderChecker) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// TestBoundedWhileTimerDrains is the case that let the old queue grow: the
// flush timer's goroutine delivers slowly while one caller keeps starting
// new flows, each evicting a session. After every call, what was handed in
// and not yet delivered stays within MaxFlows sessions and queueLimit
// packets on their way.
func TestBoundedWhileTimerDrains(t *testing.T) {
	for _, maxFlows := range []int{DefaultMaxFlows, 64} {
		t.Run("", func(t *testing.T) {
			checker := newOrderChecker(t, 1000)
			e := newEngine(t, checker, Config{MaxFlows: maxFlows, Shards: 1, FlushDelay: time.Microsecond})
			defer e.Close()
			const flows, segs, mss = 1000, 3, 100
			var in int64
			bound := int64((maxFlows + queueLimit) * segs * mss)
			worst := int64(0)
			for f := range flows {
				for _, b := range flowSegments(f, segs, mss) {
					feed(e, viaPacket, b)
				}
				in += segs * mss
				outstanding := in - checker.bytes.Load()
				worst = max(worst, outstanding)
				require.LessOrEqual(t, outstanding, bound, "after flow %d", f)
			}
			e.Flush()
			assert.Equal(t, in, checker.bytes.Load(), "every byte delivered")
			assert.NotZero(t, e.Stats().FlushTimer, "the timer delivered some")
			t.Logf("MaxFlows %d: at most %d bytes outstanding, bound %d", maxFlows, worst, bound)
		})
	}
}

// TestParallelDeliverers: goroutines that deliver distinct flows into one
// engine (as gVisor's fdbased processors do) reach netstack at the same
// time rather than one of them delivering for all, each flow in order and
// whole, and the engine never holds more than its bound.
func TestParallelDeliverers(t *testing.T) {
	const goroutines, flowsEach, segs, mss = 4, 4, 300, 64
	checker := newOrderChecker(t, 2000)
	e := newEngine(t, checker, Config{MaxFlows: 8, MaxSegments: 4, Shards: 1})
	defer e.Close()
	var wg sync.WaitGroup
	var worstHeld atomic.Uint64
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pkts := make([][][]byte, flowsEach)
			for i := range pkts {
				pkts[i] = flowSegments(g*flowsEach+i, segs, mss)
			}
			for k := range segs {
				for i := range pkts {
					feed(e, viaPacket, pkts[i][k])
				}
				if held := e.Stats().Held(); held > worstHeld.Load() {
					worstHeld.Store(held)
				}
				if k%8 == 7 {
					e.own.flushAll(cFlushBatch) // a batch end
				}
			}
		}()
	}
	wg.Wait()
	e.Flush()
	assert.Equal(t, int64(goroutines*flowsEach*segs*mss), checker.bytes.Load())
	assert.GreaterOrEqual(t, checker.maxIn.Load(), int32(2), "netstack was entered by one goroutine at a time")
	// Held counts sessions and packets on their way: MaxFlows + queueLimit.
	assert.LessOrEqual(t, worstHeld.Load(), uint64(8+queueLimit))
	t.Logf("at most %d in netstack at once, %d held", checker.maxIn.Load(), worstHeld.Load())
}
