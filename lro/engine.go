package lro

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// Engine merges in-order TCP segments on their way from a link endpoint to
// netstack. It is a stack.NetworkDispatcher; deliveries may come from
// several goroutines at once. What is delivered to the Engine itself goes
// to its first table; a lower endpoint with several receive queues gives
// each its own Queue (rxbatch.MultiQueue). Flush, Stats, SetMerging and
// Close on the Engine cover every queue.
type Engine struct {
	// own is the table of what is delivered to the Engine itself. Its off
	// flag, set while SetMerging has turned merging off, is every queue's.
	own *Queue

	qmu    sync.Mutex // guards writes to queues
	queues atomic.Pointer[[]*Queue]
}

// Queue is the part of an Engine that one receive queue delivers to: a flow
// table of its own, sized by Config.MaxFlows, whose Flush delivers only
// that table's sessions, as each Linux NAPI context flushes only its own
// GRO list. Engine.Queue returns it. It is a stack.NetworkDispatcher, an
// rxbatch.Flusher, FragmentDispatcher and BytesDispatcher.
type Queue struct {
	next      stack.NetworkDispatcher
	cfg       Config
	seed      uint64
	shards    []shard
	shardMask uint64
	perShard  int          // sessions per shard
	timer     tcpip.Timer  // nil when FlushDelay < 0
	armed     atomic.Bool  // the timer is set to fire
	closed    atomic.Bool  // Close was called: hold nothing more
	off       *atomic.Bool // the Engine's: merging is off
}

var (
	_ stack.NetworkDispatcher    = (*Engine)(nil)
	_ rxbatch.Flusher            = (*Engine)(nil)
	_ rxbatch.FragmentDispatcher = (*Engine)(nil)
	_ rxbatch.BytesDispatcher    = (*Engine)(nil)
	_ rxbatch.MultiQueue         = (*Engine)(nil)

	_ stack.NetworkDispatcher    = (*Queue)(nil)
	_ rxbatch.Flusher            = (*Queue)(nil)
	_ rxbatch.FragmentDispatcher = (*Queue)(nil)
	_ rxbatch.BytesDispatcher    = (*Queue)(nil)
)

// New returns an Engine that delivers to next. It sizes every table once,
// here and in Queue; nothing on the per-packet path allocates afterwards.
func New(next stack.NetworkDispatcher, cfg Config) (*Engine, error) {
	if next == nil {
		return nil, fmt.Errorf("lro: nil dispatcher: %w", ErrInvalidConfig)
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.local = rxbatch.LocalityOf(next)
	return &Engine{own: newQueue(next, cfg, new(atomic.Bool))}, nil
}

// newQueue makes a queue from a checked Config, switched by off.
func newQueue(next stack.NetworkDispatcher, cfg Config, off *atomic.Bool) *Queue {
	q := &Queue{
		next:      next,
		cfg:       cfg,
		seed:      rand.Uint64(),
		shards:    make([]shard, cfg.Shards),
		shardMask: uint64(cfg.Shards - 1),
		off:       off,
	}
	q.perShard = (cfg.MaxFlows + cfg.Shards - 1) / cfg.Shards
	for i := range q.shards {
		sh := &q.shards[i]
		sh.init(q.perShard, func(it pending) { q.deliver(sh, &it) })
	}
	if cfg.FlushDelay > 0 {
		q.timer = cfg.Clock.AfterFunc(time.Hour, q.timerFlush)
		q.timer.Stop()
	}
	return q
}

// DeliverNetworkPacket implements stack.NetworkDispatcher; see
// Queue.DeliverNetworkPacket.
func (e *Engine) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	e.own.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher; see
// Queue.DeliverLinkPacket.
func (e *Engine) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	e.own.DeliverLinkPacket(proto, pkt)
}

// DeliverFragments implements rxbatch.FragmentDispatcher; see
// Queue.DeliverFragments.
func (e *Engine) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	e.own.DeliverFragments(proto, linkHeaderLen, buf)
}

// DeliverBytes implements rxbatch.BytesDispatcher; see Queue.DeliverBytes.
func (e *Engine) DeliverBytes(proto tcpip.NetworkProtocolNumber, b []byte) {
	e.own.DeliverBytes(proto, b)
}

// DeliverNetworkPacket implements stack.NetworkDispatcher. It does not take
// the caller's reference: a packet it holds gets a reference of its own,
// and a merged packet's payload views move to the held packet, leaving pkt
// empty for the caller to release.
func (q *Queue) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	r := packetOf(pkt)
	q.handle(proto, &r)
}

// DeliverLinkPacket implements stack.NetworkDispatcher by passing pkt on:
// packets for packet endpoints are never merged.
func (q *Queue) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	q.next.DeliverLinkPacket(proto, pkt)
}

// DeliverFragments implements rxbatch.FragmentDispatcher. It builds a PacketBuffer
// only for a packet that passes through or starts a session; a segment
// that merges costs its views only.
func (q *Queue) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	r := frameOf(buf, linkHeaderLen)
	q.handle(proto, &r)
	r.src.buf.Release() // whatever was not moved into a packet
}

// DeliverBytes implements BytesDispatcher: b is one IP packet of protocol
// proto, from the network header on, that the caller keeps and may reuse
// as soon as DeliverBytes returns. The engine parses and checks b where it
// lies and never keeps it: a segment that merges has its payload copied
// into the held packet's own pooled views, which double in size as it
// grows, so a merged packet of 64 KiB has a handful of views, not one per
// segment (bytes.go); a packet that starts a session or is delivered as
// it is is copied once into pooled views. No PacketBuffer is made for a
// segment that merges.
//
// Its checksums are verified unless the link endpoint below said it
// verified them (lroendpoint with a lower endpoint reporting
// stack.CapabilityRXChecksumOffload). End each batch with Flush.
func (q *Queue) DeliverBytes(proto tcpip.NetworkProtocolNumber, b []byte) {
	r := bytesOf(b)
	q.handle(proto, &r)
}

// handle is the data path: parse, then classify, then pass through, merge,
// or flush and hold.
func (q *Queue) handle(proto tcpip.NetworkProtocolNumber, r *packetRef) {
	var s segment
	v := parseSegment(r, proto, &s)
	if v != verdictPass {
		if len(q.shards) > 1 {
			s.flowHash(q.seed) // picks the shard
		}
		switch {
		case !verifySegment(r, &s, q.validated(r)):
			v, s.reason = verdictPass, cPassBadChecksum
		case v == verdictCandidate && q.refusesECN(&s):
			v, s.reason = verdictPassFlow, cPassTCPFlags
		case s.fragment && q.cfg.ClaimChecksumOffload:
			v = verdictPass // dropped by pass: nobody checks it later
		case v == verdictCandidate && q.off.Load():
			// Merging is off: the packet goes up as it came, after its
			// flow's held packet, which was held before the switch.
			v, s.reason = verdictPassFlow, cPassMergingOff
		}
	}
	sh := &q.shards[s.hash&q.shardMask]
	switch v {
	case verdictPass:
		q.pass(sh, proto, r, s.reason)
	case verdictPassFlow:
		q.flushAndPass(sh, proto, r, &s)
	default:
		q.mergeOrHold(sh, proto, r, &s)
	}
}

// validated reports whether the lower endpoint verified r's checksums.
func (q *Queue) validated(r *packetRef) bool {
	return q.cfg.TrustChecksums || r.validated
}

// pass delivers a packet that belongs to no session, after the checks that
// ClaimChecksumOffload owes netstack. Its flow is unknown or it is bad
// input, so it needs no place in any flow's order and no lane.
func (q *Queue) pass(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, reason counter) {
	if q.cfg.ClaimChecksumOffload && !q.validated(r) {
		if reason == cPassBadChecksum {
			sh.stats.inc(cDropBadChecksum)
			return
		}
		if drop, ok := verifyForOffload(r, proto); !ok {
			sh.stats.inc(drop)
			return
		}
	}
	// Here, with ClaimChecksumOffload, the checks netstack skips passed.
	it := passItem(proto, r, reason, 0, q.validated(r) || q.cfg.ClaimChecksumOffload)
	q.deliver(sh, &it)
}

// flushAndPass delivers a valid TCP packet that must not merge, after its
// flow's held packet, so the two arrive in order.
func (q *Queue) flushAndPass(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	sh.mu.Lock()
	sh.q.reserve(2)
	q.passAfterFlow(sh, proto, r, s, 2)
}

// passAfterFlow is flushAndPass with sh locked and a reservation of
// reserved >= 2 made.
//
// +checklocksrelease:sh.mu
func (q *Queue) passAfterFlow(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment, reserved int) {
	var out [2]pending
	n := 0
	if i := sh.lookup(s, q.seed); i >= 0 {
		out[n] = sh.take(i, cFlushOrder)
		n++
	}
	out[n] = passItem(proto, r, s.reason, s.flowHash(q.seed), true) // a candidate: verified
	q.unlockAndDeliver(sh, out[:n+1], reserved, false)
}

// mergeOrHold runs a candidate segment against its flow's session: merge,
// or flush and hold, or flush and pass.
func (q *Queue) mergeOrHold(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	var out [3]pending // at most: an evicted session, the one s ended or filled, s itself
	sh.mu.Lock()
	sh.q.reserve(len(out))
	i, kept := q.sessionOf(sh, proto, s, len(out))
	a := actionStart
	switch {
	case !kept:
		a, s.reason = actionPass, cPassNotLocal
	case i >= 0:
		if a = q.classify(&sh.flows[i].session, s); a == actionPass {
			s.reason = cPassOutOfOrder
		}
	}
	if a == actionPass {
		// The held packet first, then s as it is (inet_lro: flush, then
		// hand up what cannot join).
		q.passAfterFlow(sh, proto, r, s, len(out))
		return
	}
	i, n := q.apply(sh, i, a, proto, r, s, out[:])
	done := q.done(&sh.flows[i].session, s)
	if done {
		out[n] = sh.take(i, cFlushLimit)
		n++
	}
	if n == 0 && a == actionMerge { // most segments end here
		sh.q.unreserve(len(out))
		sh.mu.Unlock()
		return
	}
	q.unlockAndDeliver(sh, out[:n], len(out), false)
	if a != actionMerge && !done {
		q.armTimer(q.cfg.FlushDelay) // s is held now
	}
}

// apply does a, which is not actionPass, with s: merge it into the
// session in slot i, or start a session for it (i is -1), or end the
// session in slot i and hold s in its place. It returns the slot of s's
// session and how many packets it put in out, which left the table.
//
// +checklocks:sh.mu
func (q *Queue) apply(sh *shard, i int32, a action, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment, out []pending) (int32, int) {
	switch a {
	case actionMerge:
		q.merge(&sh.flows[i].session, s, r)
		sh.merged++
		return i, 0
	case actionStart:
		n := 0
		if sh.full() {
			out[n] = sh.take(sh.oldest, cFlushEvict)
			n++
		}
		i = sh.insert(s, q.seed)
		q.hold(&sh.flows[i].session, proto, r, s)
		return i, n
	}
	out[0] = sessionItem(sh.flows[i].session, a.flushCause(), sh.flows[i].hash)
	q.hold(&sh.flows[i].session, proto, r, s)
	return i, 1
}

// sessionOf returns the slot of s's session, or -1 if s would start
// one. If it would, and the engine can ask, it first asks netstack whether
// it keeps s's flow, with sh unlocked (and its reservation of reserve
// returned meanwhile), since that calls into netstack: a flow netstack
// forwards must not merge, since it cannot forward the result, and then
// kept is false. A kept flow is asked once per session; a forwarded one
// never has a session, so each of its candidate segments is asked.
//
// +checklocks:sh.mu
func (q *Queue) sessionOf(sh *shard, proto tcpip.NetworkProtocolNumber, s *segment, reserve int) (i int32, kept bool) {
	if i = sh.lookup(s, q.seed); i >= 0 || q.cfg.local == nil {
		return i, true
	}
	sh.q.unreserve(reserve)
	sh.mu.Unlock()
	kept = q.cfg.local.DeliversLocally(proto, s.dst())
	sh.mu.Lock()
	sh.q.reserve(reserve)
	return sh.lookup(s, q.seed), kept
}

// unlockAndDeliver hands items, produced under sh.mu out of a reservation of
// reserved, to sh's delivery queue, unlocks sh, and delivers those that
// are this goroutine's to deliver. It returns what a Flush must wait for:
// with every, all that left the table before items.
//
// +checklocksrelease:sh.mu
func (q *Queue) unlockAndDeliver(sh *shard, items []pending, reserved int, every bool) pushed {
	p := sh.q.push(items, reserved, every)
	sh.mu.Unlock()
	sh.q.run(items, &p)
	return p
}

// deliver finalizes a merged packet, hands it to netstack and drops the
// engine's reference, if it has one.
func (q *Queue) deliver(sh *shard, it *pending) {
	finalize(&it.s)
	sh.stats.inc(cOut)
	sh.stats.inc(it.s.cause)
	if it.s.segs > 1 {
		sh.stats.inc(cMergedPackets)
	}
	q.next.DeliverNetworkPacket(it.proto, it.s.pkt)
	if it.owned {
		it.s.pkt.DecRef()
	}
}

// hold makes the packet of s the held packet of session f.
func (q *Queue) hold(f *session, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	q.start(f, s)
	f.grows, f.room, f.lastView = false, nil, 0
	if r.keeps() {
		f.pkt = r.keep(proto)
	} else {
		holdCopy(f, proto, r, s.ipLen+s.tcpLen, s.payload)
	}
	if q.timer != nil {
		f.heldAt = q.cfg.Clock.NowMonotonic()
	}
	// The headers are rewritten at flush: they must not be shared. A
	// chunk from a link endpoint is not, and then this copies nothing.
	f.hdr, _ = f.pkt.Data().PullUp(s.ipLen + s.tcpLen)
}
