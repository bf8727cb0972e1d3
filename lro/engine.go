package lro

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Defaults for the zero Config.
const (
	DefaultMaxFlows    = 8                      // inet_lro drivers' usual max_desc
	DefaultMaxSegments = 64                     // inet_lro drivers' usual max_aggr
	DefaultFlushDelay  = 100 * time.Microsecond // about one netstack batch
)

// minFlowsPerShard is the smallest shard the default Config makes.
const minFlowsPerShard = 16

// ErrInvalidConfig is wrapped by the error New returns for a Config it
// cannot use.
var ErrInvalidConfig = errors.New("invalid config")

// Config tunes an Engine. The zero value is ready to use: 8 flows, 64
// segments and up to a 65535-byte IP packet per merged packet, inet_lro's
// merge rules, checksums verified by the engine and again by netstack.
type Config struct {
	// MaxFlows is the number of sessions held at once (inet_lro max_desc).
	// 0 means DefaultMaxFlows.
	MaxFlows int
	// MaxSegments is the number of segments merged into one packet
	// (inet_lro max_aggr). 0 means DefaultMaxSegments.
	MaxSegments int
	// MaxBytes is the most TCP payload in one merged packet. 0 means the
	// most that fits a 65535-byte IP packet.
	MaxBytes int
	// Resegmentable selects Linux GRO's rules: ACK, window and options
	// identical and equal-sized segments, so a merged packet can be split
	// back into exactly the segments that arrived. False selects inet_lro's
	// rules, where the newest ACK, window and timestamps win.
	Resegmentable bool
	// ClaimChecksumOffload makes the engine verify, on every packet it
	// hands up, what netstack skips when the link endpoint reports
	// stack.CapabilityRXChecksumOffload (the IPv4 header checksum, TCP and
	// UDP checksums), and drop what fails or cannot be verified. Set it
	// only when the endpoint above the engine reports that capability, as
	// lroendpoint does in this mode.
	ClaimChecksumOffload bool
	// FlushDelay bounds how long a packet is held when the lower endpoint
	// never calls Flush. One timer is armed per batch of holds, never one
	// per packet. 0 means DefaultFlushDelay; negative means never, for a
	// lower endpoint that always ends its batches with Flush.
	FlushDelay time.Duration
	// LowerChecksumOffload says that the lower endpoint verified the
	// checksums of every packet it delivers, as a link endpoint reporting
	// stack.CapabilityRXChecksumOffload does; packets it delivers as
	// fragments, which carry no RXChecksumValidated flag, are then trusted
	// too. lroendpoint sets it from the lower endpoint's capabilities.
	LowerChecksumOffload bool
	// Shards is the number of independently locked parts of the flow
	// table, rounded up to a power of two. 0 means one per CPU where each
	// shard then holds at least 16 sessions, else one. Each shard holds
	// MaxFlows/Shards sessions.
	Shards int
	// Clock runs the flush timer. nil means the system clock.
	Clock tcpip.Clock
}

// withDefaults returns c with zero fields set, or an error naming the bad
// field.
func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name string
		v    int
	}{{"MaxFlows", c.MaxFlows}, {"MaxSegments", c.MaxSegments}, {"MaxBytes", c.MaxBytes}, {"Shards", c.Shards}} {
		if f.v < 0 {
			return c, fmt.Errorf("lro: %s %d < 0: %w", f.name, f.v, ErrInvalidConfig)
		}
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxSegments == 0 {
		c.MaxSegments = DefaultMaxSegments
	}
	if c.FlushDelay == 0 {
		c.FlushDelay = DefaultFlushDelay
	}
	if c.Shards == 0 {
		// One shard per CPU, but only where each can hold enough
		// sessions: flows hash unevenly, and a small shard thrashes.
		c.Shards = max(1, min(runtime.GOMAXPROCS(0), c.MaxFlows/minFlowsPerShard))
	}
	c.Shards = nextPow2(c.Shards)
	if c.Shards > c.MaxFlows {
		return c, fmt.Errorf("lro: Shards %d > MaxFlows %d: %w", c.Shards, c.MaxFlows, ErrInvalidConfig)
	}
	if c.Clock == nil {
		c.Clock = tcpip.NewStdClock()
	}
	return c, nil
}

// Flusher is called by a lower endpoint at the end of each dispatch batch
// (the end of a NAPI poll in Linux). *Engine implements it; a lower
// endpoint finds it by a type assertion on the dispatcher it was attached
// to.
type Flusher interface {
	// Flush delivers every held packet.
	Flush()
}

// FragmentDispatcher is "receive in pages" (inet_lro lro_receive_frags): a
// lower endpoint that read a frame into pooled views hands the views over
// without building a PacketBuffer. *Engine implements it.
type FragmentDispatcher interface {
	// DeliverFragments takes ownership of buf, a frame of protocol proto
	// whose first linkHeaderLen bytes are its link header.
	DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer)
}

// MultiQueue is implemented by *Engine. A lower endpoint that delivers from
// several goroutines, one per receive queue, each with flows of its own
// (as a NIC's RSS steers each flow to one queue, or as this project's
// fdbased reads each fd on its own goroutine), hands queue i's packets to
// Queue(i) and calls its Flush at the end of that queue's batches.
type MultiQueue interface {
	// Queue returns the engine of receive queue i.
	Queue(i int) *Engine
}

// Engine merges in-order TCP segments on their way from a link endpoint to
// netstack. It is a stack.NetworkDispatcher; deliveries may come from
// several goroutines at once.
type Engine struct {
	next      stack.NetworkDispatcher
	cfg       Config
	seed      uint64
	shards    []shard
	shardMask uint64
	timer     tcpip.Timer // nil when FlushDelay < 0
	armed     atomic.Bool // the timer is set to fire
	closed    atomic.Bool // Close was called: hold nothing more

	parent *Engine    // set on a queue's engine
	qmu    sync.Mutex // guards writes to queues
	queues atomic.Pointer[[]*Engine]
}

var (
	_ stack.NetworkDispatcher = (*Engine)(nil)
	_ Flusher                 = (*Engine)(nil)
	_ FragmentDispatcher      = (*Engine)(nil)
	_ MultiQueue              = (*Engine)(nil)
)

// New returns an Engine that delivers to next. It sizes every table once,
// here; nothing on the per-packet path allocates afterwards.
func New(next stack.NetworkDispatcher, cfg Config) (*Engine, error) {
	if next == nil {
		return nil, fmt.Errorf("lro: nil dispatcher: %w", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return build(next, cfg), nil
}

// build makes an engine from a checked Config.
func build(next stack.NetworkDispatcher, cfg Config) *Engine {
	e := &Engine{
		next:      next,
		cfg:       cfg,
		seed:      rand.Uint64(),
		shards:    make([]shard, cfg.Shards),
		shardMask: uint64(cfg.Shards - 1),
	}
	perShard := (cfg.MaxFlows + cfg.Shards - 1) / cfg.Shards
	for i := range e.shards {
		e.shards[i].init(perShard)
	}
	if cfg.FlushDelay > 0 {
		e.timer = cfg.Clock.AfterFunc(time.Hour, e.timerFlush)
		e.timer.Stop()
	}
	return e
}

// Queue implements MultiQueue. Each queue, 0 included, has a flow table of
// its own, sized by Config.MaxFlows, and its Flush delivers only that
// table's sessions, as each Linux NAPI context flushes only its own GRO
// list: two goroutines with their own queues never share a lock, and one
// queue's batch end never cuts another's batch short. e's own table takes
// what is delivered to e itself. Flush, Close and Stats on e cover every
// queue.
func (e *Engine) Queue(i int) *Engine {
	if e.parent != nil {
		return e.parent.Queue(i)
	}
	i = max(i, 0)
	if qs := e.queues.Load(); qs != nil && i < len(*qs) {
		return (*qs)[i]
	}
	e.qmu.Lock()
	defer e.qmu.Unlock()
	var qs []*Engine
	if p := e.queues.Load(); p != nil {
		qs = *p
	}
	for len(qs) <= i {
		q := build(e.next, e.cfg)
		q.parent = e
		if e.closed.Load() {
			q.closed.Store(true)
		}
		qs = append(qs[:len(qs):len(qs)], q)
	}
	e.queues.Store(&qs)
	return qs[i]
}

// subqueues returns the engines of the queues made so far.
func (e *Engine) subqueues() []*Engine {
	if qs := e.queues.Load(); qs != nil {
		return *qs
	}
	return nil
}

// DeliverNetworkPacket implements stack.NetworkDispatcher. It does not take
// the caller's reference: a packet it holds gets a reference of its own,
// and a merged packet's payload views move to the held packet, leaving pkt
// empty for the caller to release.
func (e *Engine) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r := packetRef{pkt: pkt}
	e.handle(proto, &r)
}

// DeliverLinkPacket implements stack.NetworkDispatcher by passing pkt on:
// packets for packet endpoints are never merged.
func (e *Engine) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	e.next.DeliverLinkPacket(proto, pkt)
}

// DeliverFragments implements FragmentDispatcher. It builds a PacketBuffer
// only for a packet that passes through or starts a session; a segment
// that merges costs its views only.
func (e *Engine) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	r := packetRef{buf: buf, off: linkHeaderLen}
	e.handle(proto, &r)
	r.buf.Release() // whatever was not moved into a packet
}

// Flush implements Flusher: it delivers every held packet (inet_lro
// lro_flush_all), of every queue when e is the engine New returned.
func (e *Engine) Flush() {
	e.flushAll(cFlushBatch)
	for _, q := range e.subqueues() {
		q.flushAll(cFlushBatch)
	}
}

// Close stops the flush timers and delivers every held packet. Packets
// that arrive after Close pass through without being held.
func (e *Engine) Close() {
	// Closed first, then the queues under qmu: a queue that Queue makes
	// after this sees e closed, and one made before is in the list.
	e.closed.Store(true)
	e.qmu.Lock()
	qs := append([]*Engine{e}, e.subqueues()...)
	e.qmu.Unlock()
	for _, q := range qs {
		q.closed.Store(true)
		if q.timer != nil {
			q.timer.Stop()
		}
		q.flushAll(cFlushBatch)
	}
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	s := e.stats()
	for _, q := range e.subqueues() {
		s.add(q.stats())
	}
	return s
}

// stats returns the counters of e's own table.
func (e *Engine) stats() Stats {
	var s Stats
	held := 0
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		held += sh.n + len(sh.queue) - sh.head
		s.SegmentsMerged += sh.merged
		sh.mu.Unlock()
		sh.stats.addTo(&s)
	}
	// Every packet in is out, merged, dropped, or still with the engine;
	// counting it as it comes would cost an atomic add per packet.
	s.PacketsIn = s.PacketsOut + s.SegmentsMerged + s.Dropped() + uint64(held)
	return s
}

// handle is the data path: parse, then classify, then pass through, merge,
// or flush and hold.
func (e *Engine) handle(proto tcpip.NetworkProtocolNumber, r *packetRef) {
	var s segment
	v := parseSegment(r, proto, &s)
	if v != verdictPass {
		if len(e.shards) > 1 {
			s.flowHash(e.seed) // picks the shard
		}
		switch {
		case !verifySegment(r, &s, e.validated(r)):
			v, s.reason = verdictPass, cPassBadChecksum
		case s.fragment && e.cfg.ClaimChecksumOffload:
			v = verdictPass // dropped by pass: nobody checks it later
		}
	}
	sh := &e.shards[s.hash&e.shardMask]
	switch v {
	case verdictPass:
		e.pass(sh, proto, r, s.reason)
	case verdictPassFlow:
		e.flushAndPass(sh, proto, r, &s)
	default:
		e.mergeOrHold(sh, proto, r, &s)
	}
}

// validated reports whether the lower endpoint verified r's checksums.
func (e *Engine) validated(r *packetRef) bool {
	return e.cfg.LowerChecksumOffload || (r.pkt != nil && r.pkt.RXChecksumValidated)
}

// pass delivers a packet that belongs to no session, after the checks that
// ClaimChecksumOffload owes netstack. Its flow is unknown or it is bad
// input, so it needs no place in any flow's order.
func (e *Engine) pass(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, reason counter) {
	if e.cfg.ClaimChecksumOffload && !e.validated(r) {
		if reason == cPassBadChecksum {
			sh.stats.inc(cDropBadChecksum)
			return
		}
		if drop, ok := verifyForOffload(r, proto); !ok {
			sh.stats.inc(drop)
			return
		}
	}
	it := passItem(proto, r, reason)
	e.deliver(sh, &it)
}

// flushAndPass delivers a valid TCP packet that must not merge, after its
// flow's held packet, so the two arrive in order.
func (e *Engine) flushAndPass(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	var out [2]pending
	n := 0
	sh.mu.Lock()
	if i := sh.lookup(s, e.seed); i >= 0 {
		out[n] = sessionItem(sh.remove(i), cFlushOrder)
		n++
	}
	out[n] = passItem(proto, r, s.reason)
	e.release(sh, out[:n+1])
}

// mergeOrHold runs a candidate segment against its flow's session: merge,
// or flush and hold, or flush and pass.
func (e *Engine) mergeOrHold(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	sh.mu.Lock()
	i := sh.lookup(s, e.seed)
	var a action
	if i >= 0 {
		f := &sh.flows[i].session
		if a = e.classify(f, s); a == actionMerge {
			e.merge(f, s, r)
			sh.merged++
			if !e.done(f, s) {
				// Most segments end here, with nothing to deliver:
				// out below is not even zeroed for them.
				e.release(sh, nil)
				return
			}
		}
	}
	var out [3]pending // at most: an ended session, the one s filled, or s itself
	n, held := 0, false
	if i < 0 {
		if sh.full() {
			out[n] = sessionItem(sh.remove(sh.oldest), cFlushEvict)
			n++
		}
		i = sh.insert(s, e.seed)
		e.hold(&sh.flows[i].session, proto, r, s)
		held = true
	} else {
		f := &sh.flows[i].session
		switch a {
		case actionMerge: // and the packet is done: see below
		case actionPass:
			out[n] = sessionItem(sh.remove(i), cFlushOrder)
			out[n+1] = passItem(proto, r, cPassOutOfOrder)
			n += 2
			i = -1
		default:
			cause := cFlushMismatch
			if a == actionRestartLimit {
				cause = cFlushLimit
			}
			out[n] = sessionItem(*f, cause)
			n++
			e.hold(f, proto, r, s)
			held = true
		}
	}
	if i >= 0 && e.done(&sh.flows[i].session, s) {
		out[n] = sessionItem(sh.remove(i), cFlushLimit)
		n++
		held = false
	}
	e.release(sh, out[:n])
	if held {
		e.armTimer(e.cfg.FlushDelay)
	}
}

// hold makes the packet of s the held packet of session f.
func (e *Engine) hold(f *session, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	if r.pkt != nil {
		f.pkt = r.pkt.IncRef()
	} else {
		f.pkt = newPacket(proto, r)
	}
	e.start(f, s)
	if e.timer != nil {
		f.heldAt = e.cfg.Clock.NowMonotonic()
	}
	// The headers are rewritten at flush: they must not be shared. A
	// chunk from a link endpoint is not, and then this copies nothing.
	f.hdr, _ = pullUpWritable(f.pkt, nil, 0, s.ipLen+s.tcpLen)
}

// newPacket builds a PacketBuffer from a receive-in-pages frame as gVisor's
// fdbased does: the frame is the payload and the link header is consumed.
// The frame's views move into the packet.
func newPacket(proto tcpip.NetworkProtocolNumber, r *packetRef) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: r.buf})
	r.buf = buffer.Buffer{} // the packet owns the views now
	if r.off > 0 {
		pkt.LinkHeader().Consume(r.off)
	}
	pkt.NetworkProtocolNumber = proto
	return pkt
}

// pending is a packet on its way to netstack: an ended session, or a
// packet passed through as it is.
type pending struct {
	s     session // s.pkt goes up; s.cause is the flush cause or pass reason
	proto tcpip.NetworkProtocolNumber
	owned bool // the engine holds a reference to s.pkt, dropped after delivery
}

// sessionItem is an ended session's packet, whose reference the engine
// owns.
func sessionItem(f session, cause counter) pending {
	f.cause = cause
	proto := header.IPv4ProtocolNumber
	if f.v6 {
		proto = header.IPv6ProtocolNumber
	}
	return pending{s: f, proto: proto, owned: true}
}

// passItem is the packet of r, delivered as it is. The caller's
// PacketBuffer is borrowed; a receive-in-pages frame becomes a packet the
// engine owns.
func passItem(proto tcpip.NetworkProtocolNumber, r *packetRef, reason counter) pending {
	if r.pkt != nil {
		return pending{s: session{pkt: r.pkt, cause: reason}, proto: proto}
	}
	return pending{s: session{pkt: newPacket(proto, r), cause: reason}, proto: proto, owned: true}
}

// release unlocks sh and delivers items in order, after everything the
// shard queued before them. One goroutine at a time drains a shard's queue
// (as one CPU runs a Linux qdisc), so packets of one flow reach netstack in
// the order the table produced them even when a Flush or an eviction on
// another goroutine ended the flow's session. No lock is held while
// netstack runs, and a delivery that re-enters the engine only queues.
//
// Every item gets a queue position, delivered inline or not, so that
// release returns 0 if the items were delivered, or the position that
// the draining goroutine must reach for them, and everything removed from
// the table before them, to be.
//
// +checklocksrelease:sh.mu
func (e *Engine) release(sh *shard, items []pending) uint64 {
	if len(items) == 0 && !sh.draining {
		sh.mu.Unlock()
		return 0
	}
	sh.queued += uint64(len(items))
	if sh.draining {
		for i := range items {
			if it := &items[i]; !it.owned {
				it.s.pkt.IncRef() // the caller's packet outlives the call
				it.owned = true
			}
			sh.queue = append(sh.queue, items[i])
		}
		target := sh.queued
		sh.mu.Unlock()
		return target
	}
	sh.draining = true
	sh.mu.Unlock()
	for i := range items {
		e.deliver(sh, &items[i])
	}
	sh.mu.Lock()
	e.drain(sh, len(items))
	return 0
}

// drain records n delivered packets, then delivers what other goroutines
// queued on sh meanwhile, until the queue is empty.
//
// +checklocksrelease:sh.mu
func (e *Engine) drain(sh *shard, n int) {
	var batch [flushBatch]pending
	for {
		sh.drained += uint64(n)
		if sh.waiters > 0 {
			sh.progress.Broadcast()
		}
		n = copy(batch[:], sh.queue[sh.head:])
		sh.head += n
		if n == 0 {
			clear(sh.queue)
			sh.queue, sh.head, sh.draining = sh.queue[:0], 0, false
			sh.mu.Unlock()
			return
		}
		sh.mu.Unlock()
		for i := range n {
			e.deliver(sh, &batch[i])
		}
		clear(batch[:n])
		sh.mu.Lock()
	}
}

// waitDrained blocks until the draining goroutine has delivered the queue
// up to position target (from release).
func (e *Engine) waitDrained(sh *shard, target uint64) {
	if target == 0 {
		return
	}
	sh.mu.Lock()
	sh.waiters++
	for sh.drained < target {
		sh.progress.Wait()
	}
	sh.waiters--
	sh.mu.Unlock()
}

// deliver finalizes a merged packet, hands it to netstack and drops the
// engine's reference, if it has one.
func (e *Engine) deliver(sh *shard, it *pending) {
	finalize(&it.s)
	sh.stats.inc(cOut)
	sh.stats.inc(it.s.cause)
	if it.s.segs > 1 {
		sh.stats.inc(cMergedPackets)
	}
	e.next.DeliverNetworkPacket(it.proto, it.s.pkt)
	if it.owned {
		it.s.pkt.DecRef()
	}
}

// flushAll delivers every held packet. When it returns, every packet held
// at the call has reached netstack, also those that another goroutine,
// draining a shard's queue, delivered for it.
func (e *Engine) flushAll(cause counter) {
	for i := range e.shards {
		e.flushShard(&e.shards[i], cause, tcpip.MonotonicTime{}, true)
	}
}

// flushShard delivers sh's sessions that started at due or earlier, or all
// of them if every is set, a few at a time so that the lock is never held
// while netstack runs. It returns how long until the oldest session left
// is due, or 0 if none is left.
func (e *Engine) flushShard(sh *shard, cause counter, due tcpip.MonotonicTime, every bool) (next time.Duration) {
	// New sessions may start while we deliver; stop after as many rounds
	// as the shard has slots, so a busy shard cannot keep us.
	for range len(sh.flows)/flushBatch + 1 {
		var out [flushBatch]pending
		n := 0
		sh.mu.Lock()
		for j := sh.oldest; j >= 0 && n < len(out); {
			f := &sh.flows[j]
			newer := f.newer
			if wait := f.heldAt.Sub(due); !every && wait > 0 {
				if next == 0 || wait < next {
					next = wait
				}
			} else {
				out[n] = sessionItem(sh.remove(j), cause)
				n++
			}
			j = newer
		}
		e.waitDrained(sh, e.release(sh, out[:n]))
		if n < len(out) {
			break
		}
	}
	return next
}

// flushBatch is how many sessions flushAll takes from a shard per lock.
const flushBatch = 16

// armTimer makes sure the flush timer will fire within d: one timer per
// batch of holds, not one per packet.
func (e *Engine) armTimer(d time.Duration) {
	if e.timer == nil || e.armed.Load() || !e.armed.CompareAndSwap(false, true) {
		return
	}
	e.timer.Reset(d)
}

// timerFlush runs when the timer fires. It delivers the sessions held for
// FlushDelay or longer, and only those: the timer was armed by the first
// hold of some batch, and a lower endpoint that ends its batches with
// Flush may have delivered that session long ago, so a younger one must
// wait for its own batch end or its own deadline. The timer is re-armed
// for the oldest session left. It disarms first, so a packet held while it
// runs arms the timer again.
func (e *Engine) timerFlush() {
	e.armed.Store(false)
	due := e.cfg.Clock.NowMonotonic().Add(-e.cfg.FlushDelay)
	var next time.Duration // until the oldest session left is due; 0: none left
	for i := range e.shards {
		if wait := e.flushShard(&e.shards[i], cFlushTimer, due, false); wait > 0 && (next == 0 || wait < next) {
			next = wait
		}
	}
	if next > 0 {
		e.armTimer(next)
	}
}
