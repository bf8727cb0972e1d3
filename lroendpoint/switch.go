package lroendpoint

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/rxbatch"
)

// mergeSwitch turns merging off and on while packets flow. While merging
// is off, packets go through a second engine that merges nothing (one
// segment per packet, so it never holds one) but checks what the first
// would have: in the ClaimChecksumOffload mode netstack checks nothing,
// whichever way a packet came.
//
// Every delivery from the lower endpoint reads the switch under mu's read
// lock, which it holds until the packet is held or handed to netstack;
// turning merging off takes the write lock, so that no delivery is half
// way through the merging engine, and flushes it before any packet can
// take the other way. A packet is therefore never overtaken by a later one
// of its flow, whichever side of the switch each went.
type mergeSwitch struct {
	pass *lro.Engine // merges nothing

	mu sync.RWMutex
	// off says that deliveries go to pass.
	// +checklocks:mu
	off bool
}

// passConfig returns the configuration of the engine that takes packets
// while merging is off: cfg with one segment per packet, which the engine
// delivers as soon as it has checked it.
func passConfig(cfg lro.Config) lro.Config {
	cfg.MaxSegments = 1
	cfg.FlushDelay = -1 // it holds nothing to flush
	return cfg
}

// SetMerging turns merging on or off, while traffic flows if need be, so
// that an operator can compare both in production. Turning it off delivers
// every packet the engine holds before it returns, and from then on every
// packet goes to netstack one for one, in order, checked as before;
// turning it on lets the next packets merge again. Stats count what
// passes while merging is on.
//
// A lower endpoint that asks for per-queue engines (lro.MultiQueue, this
// project's fdbased with several fds) gets the engine of the current side
// once per batch and ends the batch with that engine's Flush, so a batch
// that started before the switch ends on its old side, before its queue's
// next batch. SetMerging must not be called from inside a delivery (a
// netstack callback of this endpoint's NIC).
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
// is attached to, which hands each packet to the merging engine, or to
// the one that merges nothing while merging is off.
type inbound Endpoint

var (
	_ stack.NetworkDispatcher    = (*inbound)(nil)
	_ rxbatch.Flusher            = (*inbound)(nil)
	_ rxbatch.FragmentDispatcher = (*inbound)(nil)
	_ rxbatch.MultiQueue         = (*inbound)(nil)
)

// dispatcher returns what the lower endpoint is attached to.
func (e *Endpoint) dispatcher() stack.NetworkDispatcher { return (*inbound)(e) }

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (in *inbound) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	in.sw.mu.RLock()
	defer in.sw.mu.RUnlock()
	if in.sw.off {
		in.sw.pass.DeliverNetworkPacket(proto, pkt)
		return
	}
	in.engine.DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher; the engine passes
// these on anyway.
func (in *inbound) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	in.engine.DeliverLinkPacket(proto, pkt)
}

// DeliverFragments implements rxbatch.FragmentDispatcher.
func (in *inbound) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	in.sw.mu.RLock()
	defer in.sw.mu.RUnlock()
	if in.sw.off {
		in.sw.pass.DeliverFragments(proto, linkHeaderLen, buf)
		return
	}
	in.engine.DeliverFragments(proto, linkHeaderLen, buf)
}

// Flush implements rxbatch.Flusher: the lower endpoint ended a batch. While
// merging is off the engine holds nothing, and flushing it costs little.
func (in *inbound) Flush() { in.engine.Flush() }

// Queue implements rxbatch.MultiQueue: the engine of receive queue i on the
// side of the switch where packets go now.
func (in *inbound) Queue(i int) stack.NetworkDispatcher {
	in.sw.mu.RLock()
	defer in.sw.mu.RUnlock()
	if in.sw.off {
		return in.sw.pass.Queue(i)
	}
	return in.engine.Queue(i)
}
