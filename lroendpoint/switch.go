package lroendpoint

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/lro"
)

// mergeSwitch turns merging off and on while packets flow. Every delivery
// from the lower endpoint reads it under mu's read lock, which it holds
// until the packet is held by the engine or handed to netstack; turning
// merging off takes the write lock, so that no delivery is half way
// through the engine, and flushes what the engine holds before any packet
// can bypass it. A packet is therefore never overtaken by a later one of
// its flow, whichever side of the switch each went.
type mergeSwitch struct {
	mu sync.RWMutex
	// off says that deliveries bypass the engine.
	// +checklocks:mu
	off bool
}

// SetMerging turns merging on or off, while traffic flows if need be, so
// that an operator can compare both in production. Turning it off delivers
// every packet the engine holds before it returns, and from then on every
// packet goes to netstack as the lower endpoint delivered it, in order;
// turning it on lets the next packets merge again. Counters keep counting
// what passes through the engine only. It must not be called from inside
// a delivery (a netstack callback of this endpoint's NIC).
func (e *Endpoint) SetMerging(on bool) {
	e.sw.mu.Lock()
	defer e.sw.mu.Unlock()
	if e.sw.off == !on {
		return
	}
	e.sw.off = !on
	if !on {
		e.engine.Flush()
	}
}

// Merging reports whether merging is on, as it is after New.
func (e *Endpoint) Merging() bool {
	e.sw.mu.RLock()
	defer e.sw.mu.RUnlock()
	return !e.sw.off
}

// inbound is the lower endpoint's view of the endpoint: the dispatcher it
// is attached to, which hands each packet to the engine, or past it while
// merging is off.
type inbound Endpoint

var (
	_ stack.NetworkDispatcher = (*inbound)(nil)
	_ lro.Flusher             = (*inbound)(nil)
	_ lro.FragmentDispatcher  = (*inbound)(nil)
)

// dispatcher returns what the lower endpoint is attached to.
func (e *Endpoint) dispatcher() stack.NetworkDispatcher { return (*inbound)(e) }

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (in *inbound) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	in.sw.mu.RLock()
	defer in.sw.mu.RUnlock()
	if in.sw.off {
		(*upper)(in).DeliverNetworkPacket(proto, pkt)
		return
	}
	in.engine.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher; the engine passes
// these on anyway.
func (in *inbound) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	in.engine.DeliverLinkPacket(proto, pkt)
}

// DeliverFragments implements lro.FragmentDispatcher. While merging is off
// it builds the packet the engine would have built for a packet passing
// through, and takes ownership of buf as the engine does.
func (in *inbound) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	in.sw.mu.RLock()
	defer in.sw.mu.RUnlock()
	if !in.sw.off {
		in.engine.DeliverFragments(proto, linkHeaderLen, buf)
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	if linkHeaderLen > 0 {
		pkt.LinkHeader().Consume(linkHeaderLen)
	}
	pkt.NetworkProtocolNumber = proto
	(*upper)(in).DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// Flush implements lro.Flusher: the lower endpoint ended a batch. While
// merging is off the engine holds nothing, and flushing it costs little.
func (in *inbound) Flush() { in.engine.Flush() }
