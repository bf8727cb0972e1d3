package fdbased

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// dropReason says why a frame is dropped; keep says it is not. Each reason
// is counted in its own Stats field.
type dropReason uint8

const (
	keep          dropReason = iota // hand it to the dispatcher
	dropRunt                        // shorter than link header + IPv4 header
	dropOversized                   // longer than link header + MTU, or truncated
	dropNotForUs                    // unicast to another MAC
	dropNotIP                       // no link header, IP version neither 4 nor 6
	dropDetached                    // read while dispatch was being stopped
	dropVNetHdr                     // a virtio_net_hdr that cannot be applied
	numDropReasons
)

// parseFrame checks the link header of frame, the bytes a read returned,
// and returns its network protocol, or why it must be dropped. hdrSize is
// 0 or header.EthernetMinimumSize; truncated says the kernel had more of
// the frame than it returned. It reads only within frame.
func parseFrame(frame []byte, hdrSize, maxFrame int, truncated bool, addr tcpip.LinkAddress) (tcpip.NetworkProtocolNumber, dropReason) {
	if truncated || len(frame) > maxFrame {
		return 0, dropOversized
	}
	// The smallest packet worth a look is an IPv4 header; netstack checks
	// the rest, as it does for frames from gVisor's fdbased.
	if len(frame) < hdrSize+header.IPv4MinimumSize {
		return 0, dropRunt
	}
	if hdrSize == 0 {
		switch header.IPVersion(frame) {
		case header.IPv4Version:
			return header.IPv4ProtocolNumber, keep
		case header.IPv6Version:
			return header.IPv6ProtocolNumber, keep
		}
		return 0, dropNotIP
	}
	eth := header.Ethernet(frame)
	// As gVisor's parseInboundHeader: RFC 9542 2.1, a destination whose
	// first octet has its least significant bit set is a group address,
	// sent to everyone.
	dst := frame[:header.EthernetAddressSize]
	if string(dst) != string(addr) && dst[0]&0x01 == 0 {
		return 0, dropNotForUs
	}
	return eth.Type(), keep
}

// batch is one batch of frames on its way to the dispatcher: start loads
// where it goes, deliver hands over or drops each frame and counts it, and
// end signals the batch end and adds the counts to the endpoint's. A
// dispatch loop keeps one batch and reuses it, so that it is not
// allocated.
type batch struct {
	e        *Endpoint
	d        stack.NetworkDispatcher
	frag     rxbatch.FragmentDispatcher // d, if it takes views
	flush    rxbatch.Flusher            // d, if it wants batch ends
	addr     tcpip.LinkAddress
	maxFrame int // link header + MTU
	rxValid  bool
	c        batchCount
}

// start readies b for a batch of receive queue queue of e: it enters e's
// gate, which gives the dispatcher, and loads the receive settings once,
// under e's lock, for use without the lock. A dispatcher with one dispatcher per queue
// (rxbatch.MultiQueue, as the engine under lroendpoint) gets each fd's
// frames on that fd's own, whose Flush ends only its own held packets, as
// each NAPI context has its own GRO list. ring says the frames were read
// through io_uring.
func (b *batch) start(e *Endpoint, queue int, ring bool) {
	b.e = e
	b.d = e.gate.Enter() // nil while detached: the batch's frames are dropped
	e.mu.RLock()
	b.addr = e.addr
	b.maxFrame = e.hdrSize + int(e.mtu)
	e.mu.RUnlock()
	if mq, ok := b.d.(rxbatch.MultiQueue); ok {
		b.d = mq.Queue(queue)
	}
	b.frag, _ = b.d.(rxbatch.FragmentDispatcher)
	b.flush, _ = b.d.(rxbatch.Flusher)
	b.rxValid = e.caps&stack.CapabilityRXChecksumOffload != 0
	b.c = batchCount{ring: ring}
}

// deliver hands the frame of n bytes read into v to the dispatcher, or
// drops it and counts why. truncated says the kernel cut the frame short.
// It returns true if v was handed off, so the caller must read the next
// frame into a new view; a dropped frame's view stays the caller's, as it
// was.
func (b *batch) deliver(v *buffer.View, n int, truncated bool) bool {
	if n > v.Size() { // a TUN/TAP read returns the frame's whole length
		n, truncated = v.Size(), true
	}
	b.c.frames++
	b.c.bytes += uint64(n)
	proto, why := parseFrame(v.AsSlice()[:n], b.e.hdrSize, b.maxFrame, truncated, b.addr)
	if !b.accept(why) {
		return false
	}
	v.CapLength(n)
	b.handOff(proto, buffer.MakeWithView(v))
	return true
}

// deliverVNet is deliver for a frame of n bytes read after its
// virtio_net_hdr hdr (Options.VNetHdr): into v, and on into spare for a
// TCP super-packet longer than v. It reports which views were handed off.
func (b *batch) deliverVNet(hdr []byte, v, spare *buffer.View, n int, truncated bool) (tookV, tookSpare bool) {
	b.c.frames++
	if n > v.Size()+spare.Size() { // a TUN/TAP read returns the frame's whole length
		n, truncated = v.Size()+spare.Size(), true
	}
	b.c.bytes += uint64(n)
	head := v.AsSlice()[:min(n, v.Size())]
	tail := spare.AsSlice()[:n-len(head)]
	why := dropOversized
	gso := false
	if !truncated {
		gso, why = applyVNetHdr(hdr, head, tail, b.maxFrame, b.e.hdrSize)
	}
	var proto tcpip.NetworkProtocolNumber
	if why == keep {
		// applyVNetHdr checked the length.
		proto, why = parseFrame(head, b.e.hdrSize, len(head), false, b.addr)
	}
	if !b.accept(why) {
		return false, false
	}
	if gso {
		b.c.gso++
	}
	v.CapLength(len(head))
	buf := buffer.MakeWithView(v)
	if len(tail) > 0 {
		spare.CapLength(len(tail))
		buf.Append(spare)
	}
	b.handOff(proto, buf)
	return true, len(tail) > 0
}

// accept reports whether a frame parsed as why goes to the dispatcher,
// and counts it as dropped if not.
func (b *batch) accept(why dropReason) bool {
	if why == keep && b.d == nil {
		why = dropDetached
	}
	if why != keep {
		b.c.drops[why]++
		return false
	}
	return true
}

// handOff gives the dispatcher the frame in buf, which it takes.
func (b *batch) handOff(proto tcpip.NetworkProtocolNumber, buf buffer.Buffer) {
	hdrSize := b.e.hdrSize
	if b.frag != nil {
		b.frag.DeliverFragments(proto, hdrSize, buf)
		return
	}
	pkt := rxbatch.NewPacket(proto, hdrSize, buf, b.rxValid) // as gVisor's fdbased builds it
	b.d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// end tells the dispatcher that the batch is over, if it read a frame,
// adds the batch's counts to the endpoint's, and lets go of the
// dispatcher: a dispatch loop holds none between batches.
func (b *batch) end() {
	if b.c.frames > 0 && b.flush != nil {
		b.flush.Flush()
	}
	b.e.stats.add(&b.c)
	if b.d != nil {
		b.e.gate.Leave()
	}
	*b = batch{}
}
