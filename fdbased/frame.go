package fdbased

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// verdict is what parseFrame decided about a frame.
type verdict uint8

const (
	verdictDeliver    verdict = iota // hand it to the dispatcher
	verdictRunt                      // shorter than link header + IPv4 header
	verdictOversized                 // longer than link header + MTU, or truncated
	verdictNotForUs                  // unicast to another MAC
	verdictNotIP                     // no link header, IP version neither 4 nor 6
	verdictDetached                  // read while dispatch was being stopped
	verdictBadVNetHdr                // a virtio_net_hdr that cannot be applied
)

// target is where one batch goes: the dispatcher, its optional netlro
// interfaces, and what parseFrame needs. A dispatch loop loads it once per
// batch, under the endpoint's lock, and uses it without the lock.
type target struct {
	d        stack.NetworkDispatcher
	frag     rxbatch.FragmentDispatcher // d, if it takes views
	flush    rxbatch.Flusher            // d, if it wants batch ends
	addr     tcpip.LinkAddress
	maxFrame int // link header + MTU
	rxValid  bool
}

// loadTarget reads the dispatcher and the receive settings for one batch
// of receive queue queue. A dispatcher with per-queue engines
// (rxbatch.MultiQueue) gets each fd's frames on that fd's own engine, whose
// Flush ends only its own sessions, as each NAPI context has its own GRO
// list.
func (e *Endpoint) loadTarget(t *target, queue int) {
	e.mu.RLock()
	t.d = e.dispatcher
	if t.d != nil {
		// Counted under the lock that stopLocked takes to detach, so
		// that it knows whether a batch may be inside netstack.
		e.inBatch.Add(1)
	}
	t.addr = e.addr
	t.maxFrame = e.hdrSize + int(e.mtu)
	e.mu.RUnlock()
	if mq, ok := t.d.(rxbatch.MultiQueue); ok {
		t.d = mq.Queue(queue)
	}
	t.frag, _ = t.d.(rxbatch.FragmentDispatcher)
	t.flush, _ = t.d.(rxbatch.Flusher)
	t.rxValid = e.caps&stack.CapabilityRXChecksumOffload != 0
}

// parseFrame checks the link header of frame, the bytes a read returned,
// and returns its network protocol, or why it must be dropped. hdrSize is
// 0 or header.EthernetMinimumSize; truncated says the kernel had more of
// the frame than it returned. It reads only within frame.
func parseFrame(frame []byte, hdrSize, maxFrame int, truncated bool, addr tcpip.LinkAddress) (tcpip.NetworkProtocolNumber, verdict) {
	if truncated || len(frame) > maxFrame {
		return 0, verdictOversized
	}
	// The smallest packet worth a look is an IPv4 header; netstack checks
	// the rest, as it does for frames from gVisor's fdbased.
	if len(frame) < hdrSize+header.IPv4MinimumSize {
		return 0, verdictRunt
	}
	if hdrSize == 0 {
		switch header.IPVersion(frame) {
		case header.IPv4Version:
			return header.IPv4ProtocolNumber, verdictDeliver
		case header.IPv6Version:
			return header.IPv6ProtocolNumber, verdictDeliver
		}
		return 0, verdictNotIP
	}
	eth := header.Ethernet(frame)
	// As gVisor's parseInboundHeader: RFC 9542 2.1, a destination whose
	// first octet has its least significant bit set is a group address,
	// sent to everyone.
	dst := frame[:header.EthernetAddressSize]
	if string(dst) != string(addr) && dst[0]&0x01 == 0 {
		return 0, verdictNotForUs
	}
	return eth.Type(), verdictDeliver
}

// deliver hands the frame of n bytes read into v to t, or drops it and
// counts why. truncated says the kernel cut the frame short. It returns
// true if v was handed off, so the caller must read the next frame into a
// new view; a dropped frame's view stays the caller's, as it was.
func (e *Endpoint) deliver(t *target, v *buffer.View, n int, truncated bool, c *batchCount) bool {
	if n > v.Size() { // a TUN/TAP read returns the frame's whole length
		n, truncated = v.Size(), true
	}
	c.frames++
	c.bytes += uint64(n)
	proto, verdict := parseFrame(v.AsSlice()[:n], e.hdrSize, t.maxFrame, truncated, t.addr)
	if !t.accept(verdict, c) {
		return false
	}
	v.CapLength(n)
	e.handOff(t, proto, buffer.MakeWithView(v))
	return true
}

// deliverVNet is deliver for a frame of n bytes read after its
// virtio_net_hdr hdr (Options.VNetHdr): into v, and on into spare for a
// TCP super-packet longer than v. It reports which views were handed off.
func (e *Endpoint) deliverVNet(t *target, hdr []byte, v, spare *buffer.View, n int, truncated bool, c *batchCount) (tookV, tookSpare bool) {
	c.frames++
	if n > v.Size()+spare.Size() { // a TUN/TAP read returns the frame's whole length
		n, truncated = v.Size()+spare.Size(), true
	}
	c.bytes += uint64(n)
	head := v.AsSlice()[:min(n, v.Size())]
	tail := spare.AsSlice()[:n-len(head)]
	verdict := verdictOversized
	gso := false
	if !truncated {
		gso, verdict = applyVNetHdr(hdr, head, tail, t.maxFrame, e.hdrSize)
	}
	var proto tcpip.NetworkProtocolNumber
	if verdict == verdictDeliver {
		// applyVNetHdr checked the length.
		proto, verdict = parseFrame(head, e.hdrSize, len(head), false, t.addr)
	}
	if !t.accept(verdict, c) {
		return false, false
	}
	if gso {
		c.gso++
	}
	v.CapLength(len(head))
	buf := buffer.MakeWithView(v)
	if len(tail) > 0 {
		spare.CapLength(len(tail))
		buf.Append(spare)
	}
	e.handOff(t, proto, buf)
	return true, len(tail) > 0
}

// accept reports whether a frame with verdict v goes to t's dispatcher,
// and counts it as dropped if not.
func (t *target) accept(v verdict, c *batchCount) bool {
	if v == verdictDeliver && t.d == nil {
		v = verdictDetached
	}
	if v != verdictDeliver {
		c.count(v)
		return false
	}
	return true
}

// handOff gives t's dispatcher the frame in buf, which it takes.
func (e *Endpoint) handOff(t *target, proto tcpip.NetworkProtocolNumber, buf buffer.Buffer) {
	if t.frag != nil {
		t.frag.DeliverFragments(proto, e.hdrSize, buf)
		return
	}
	// As gVisor's recvMMsgDispatcher and parseInboundHeader.
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	if e.hdrSize > 0 {
		pkt.LinkHeader().Consume(e.hdrSize)
	}
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = t.rxValid
	t.d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// endBatch tells t that a batch is over and adds the batch's counts to the
// endpoint's.
func (e *Endpoint) endBatch(t *target, c *batchCount) {
	if c.frames == 0 {
		return
	}
	if t.flush != nil {
		t.flush.Flush()
	}
	e.stats.add(c)
}
