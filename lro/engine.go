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
// several goroutines at once.
type Engine struct {
	next      stack.NetworkDispatcher
	cfg       Config
	seed      uint64
	shards    []shard
	shardMask uint64
	perShard  int         // sessions per shard
	timer     tcpip.Timer // nil when FlushDelay < 0
	armed     atomic.Bool // the timer is set to fire
	closed    atomic.Bool // Close was called: hold nothing more
	// off is set while SetMerging has turned merging off; the queues'
	// engines share their parent's.
	off *atomic.Bool

	parent *Engine    // set on a queue's engine
	qmu    sync.Mutex // guards writes to queues
	queues atomic.Pointer[[]*Engine]
}

var (
	_ stack.NetworkDispatcher    = (*Engine)(nil)
	_ rxbatch.Flusher            = (*Engine)(nil)
	_ rxbatch.FragmentDispatcher = (*Engine)(nil)
	_ rxbatch.BytesDispatcher    = (*Engine)(nil)
	_ rxbatch.MultiQueue         = (*Engine)(nil)
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
	cfg.local = rxbatch.LocalityOf(next)
	return build(next, cfg, new(atomic.Bool)), nil
}

// build makes an engine from a checked Config, switched by off (shared
// with the queues' engines).
func build(next stack.NetworkDispatcher, cfg Config, off *atomic.Bool) *Engine {
	e := &Engine{
		next:      next,
		cfg:       cfg,
		seed:      rand.Uint64(),
		shards:    make([]shard, cfg.Shards),
		shardMask: uint64(cfg.Shards - 1),
		off:       off,
	}
	e.perShard = (cfg.MaxFlows + cfg.Shards - 1) / cfg.Shards
	for i := range e.shards {
		sh := &e.shards[i]
		sh.init(e.perShard, func(it pending) { e.deliver(sh, &it) })
	}
	if cfg.FlushDelay > 0 {
		e.timer = cfg.Clock.AfterFunc(time.Hour, e.timerFlush)
		e.timer.Stop()
	}
	return e
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

// DeliverFragments implements rxbatch.FragmentDispatcher. It builds a PacketBuffer
// only for a packet that passes through or starts a session; a segment
// that merges costs its views only.
func (e *Engine) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	r := packetRef{buf: buf, off: linkHeaderLen}
	e.handle(proto, &r)
	r.buf.Release() // whatever was not moved into a packet
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
func (e *Engine) DeliverBytes(proto tcpip.NetworkProtocolNumber, b []byte) {
	if b == nil {
		b = []byte{} // raw marks the path; an empty packet passes
	}
	r := packetRef{raw: b}
	e.handle(proto, &r)
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
		case v == verdictCandidate && e.refusesECN(&s):
			v, s.reason = verdictPassFlow, cPassTCPFlags
		case s.fragment && e.cfg.ClaimChecksumOffload:
			v = verdictPass // dropped by pass: nobody checks it later
		case v == verdictCandidate && e.off.Load():
			// Merging is off: the packet goes up as it came, after its
			// flow's held packet, which was held before the switch.
			v, s.reason = verdictPassFlow, cPassMergingOff
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
	return e.cfg.TrustChecksums || (r.pkt != nil && r.pkt.RXChecksumValidated)
}

// pass delivers a packet that belongs to no session, after the checks that
// ClaimChecksumOffload owes netstack. Its flow is unknown or it is bad
// input, so it needs no place in any flow's order and no lane.
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
	it := passItem(proto, r, reason, 0)
	e.deliver(sh, &it)
}

// flushAndPass delivers a valid TCP packet that must not merge, after its
// flow's held packet, so the two arrive in order.
func (e *Engine) flushAndPass(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	sh.mu.Lock()
	sh.q.reserve(2)
	e.passAfterFlow(sh, proto, r, s, 2)
}

// passAfterFlow is flushAndPass with sh locked and a reservation of
// reserved >= 2 made.
//
// +checklocksrelease:sh.mu
func (e *Engine) passAfterFlow(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment, reserved int) {
	var out [2]pending
	n := 0
	if i := sh.lookup(s, e.seed); i >= 0 {
		out[n] = sh.take(i, cFlushOrder)
		n++
	}
	out[n] = passItem(proto, r, s.reason, s.flowHash(e.seed))
	e.unlockAndDeliver(sh, out[:n+1], reserved, false)
}

// mergeOrHold runs a candidate segment against its flow's session: merge,
// or flush and hold, or flush and pass.
func (e *Engine) mergeOrHold(sh *shard, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	var out [3]pending // at most: an evicted session, the one s ended or filled, s itself
	sh.mu.Lock()
	sh.q.reserve(len(out))
	i, kept := e.sessionOf(sh, proto, s, len(out))
	if !kept {
		s.reason = cPassNotLocal
		e.passAfterFlow(sh, proto, r, s, len(out))
		return
	}
	a := actionStart
	if i >= 0 {
		a = e.classify(&sh.flows[i].session, s)
	}
	n := 0
	switch a {
	case actionMerge:
		e.merge(&sh.flows[i].session, s, r)
		sh.merged++
	case actionPass:
		// The held packet first, then s as it is (inet_lro: flush, then
		// hand up what cannot join).
		h := sh.flows[i].hash
		out[0] = sh.take(i, cFlushOrder)
		out[1] = passItem(proto, r, cPassOutOfOrder, h)
		e.unlockAndDeliver(sh, out[:2], len(out), false)
		return
	case actionStart:
		if sh.full() {
			out[n] = sh.take(sh.oldest, cFlushEvict)
			n++
		}
		i = sh.insert(s, e.seed)
		e.hold(&sh.flows[i].session, proto, r, s)
	default: // the session ends and s starts the next one in its slot
		out[n] = sessionItem(sh.flows[i].session, a.flushCause(), sh.flows[i].hash)
		n++
		e.hold(&sh.flows[i].session, proto, r, s)
	}
	done := e.done(&sh.flows[i].session, s)
	if done {
		out[n] = sh.take(i, cFlushLimit)
		n++
	}
	if n == 0 && a == actionMerge { // most segments end here
		sh.q.unreserve(len(out))
		sh.mu.Unlock()
		return
	}
	e.unlockAndDeliver(sh, out[:n], len(out), false)
	if a != actionMerge && !done {
		e.armTimer(e.cfg.FlushDelay) // s is held now
	}
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
func (e *Engine) sessionOf(sh *shard, proto tcpip.NetworkProtocolNumber, s *segment, reserve int) (i int32, kept bool) {
	if i = sh.lookup(s, e.seed); i >= 0 || e.cfg.local == nil {
		return i, true
	}
	sh.q.unreserve(reserve)
	sh.mu.Unlock()
	kept = e.cfg.local.DeliversLocally(proto, s.dst())
	sh.mu.Lock()
	sh.q.reserve(reserve)
	return sh.lookup(s, e.seed), kept
}

// unlockAndDeliver hands items, produced under sh.mu out of a reservation of
// reserved, to sh's delivery queue, unlocks sh, and delivers those that
// are this goroutine's to deliver. It returns what a Flush must wait for:
// with every, all that left the table before items.
//
// +checklocksrelease:sh.mu
func (e *Engine) unlockAndDeliver(sh *shard, items []pending, reserved int, every bool) pushed {
	p := sh.q.push(items, reserved, every)
	sh.mu.Unlock()
	sh.q.run(items, &p)
	return p
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

// hold makes the packet of s the held packet of session f.
func (e *Engine) hold(f *session, proto tcpip.NetworkProtocolNumber, r *packetRef, s *segment) {
	e.start(f, s)
	f.grows, f.room, f.lastView = false, nil, 0
	switch {
	case r.pkt != nil:
		f.pkt = r.pkt.IncRef()
	case r.raw != nil:
		holdCopy(f, proto, r, s.ipLen+s.tcpLen, s.payload)
	default:
		f.pkt = newPacket(proto, r)
	}
	if e.timer != nil {
		f.heldAt = e.cfg.Clock.NowMonotonic()
	}
	// The headers are rewritten at flush: they must not be shared. A
	// chunk from a link endpoint is not, and then this copies nothing.
	f.hdr, _ = pullUpWritable(f.pkt, nil, 0, s.ipLen+s.tcpLen)
}

// newPacket builds a PacketBuffer from a receive-in-pages frame, as
// rxbatch.NewPacket does; the frame's views move into the packet. The
// caller's bytes are copied into a pooled view.
func newPacket(proto tcpip.NetworkProtocolNumber, r *packetRef) *stack.PacketBuffer {
	if r.raw != nil {
		r.buf = buffer.MakeWithData(r.raw)
	}
	pkt := rxbatch.NewPacket(proto, r.off, r.buf, false)
	r.buf = buffer.Buffer{} // the packet owns the views now
	return pkt
}
