// Package lroendpoint wraps any stack.LinkEndpoint with an lro.Engine, so
// that netstack receives merged TCP packets.
package lroendpoint

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/lro"
)

// Endpoint is a stack.LinkEndpoint that puts an lro.Engine between a lower
// endpoint and the NIC. It forwards everything it does not change, in the
// spirit of gVisor's link/nested: it adds CapabilityRXChecksumOffload in
// the ClaimChecksumOffload mode, and Attach(nil) delivers held packets
// before it detaches.
//
// The lower endpoint is attached to the engine itself, so a lower endpoint
// that knows lro.Flusher or lro.FragmentDispatcher (this project's fdbased)
// finds them by a type assertion on its dispatcher.
type Endpoint struct {
	lower  stack.LinkEndpoint
	engine *lro.Engine
	claim  bool

	// dispatcher is the NIC, read on every delivery without a lock.
	dispatcher atomic.Pointer[stack.NetworkDispatcher]
}

var (
	_ stack.LinkEndpoint = (*Endpoint)(nil)
	_ stack.GSOEndpoint  = (*Endpoint)(nil)
	_ lro.Flusher        = (*Endpoint)(nil)
)

// New wraps lower with an engine configured by cfg. If lower reports
// stack.CapabilityRXChecksumOffload, the engine trusts its checksums
// (lro.Config.LowerChecksumOffload).
func New(lower stack.LinkEndpoint, cfg lro.Config) (*Endpoint, error) {
	e := &Endpoint{lower: lower, claim: cfg.ClaimChecksumOffload}
	if lower.Capabilities()&stack.CapabilityRXChecksumOffload != 0 {
		cfg.LowerChecksumOffload = true
	}
	engine, err := lro.New((*upper)(e), cfg)
	if err != nil {
		return nil, err
	}
	e.engine = engine
	return e, nil
}

// Stats returns a snapshot of the engine's counters.
func (e *Endpoint) Stats() lro.Stats { return e.engine.Stats() }

// Flush implements lro.Flusher: it delivers every held packet.
func (e *Endpoint) Flush() { e.engine.Flush() }

// Lower returns the wrapped endpoint.
func (e *Endpoint) Lower() stack.LinkEndpoint { return e.lower }

// Attach implements stack.LinkEndpoint. Attach(nil) stops the lower
// endpoint's deliveries, hands every held packet to the old dispatcher and
// then detaches.
//
// Call Attach(nil) yourself before Stack.RemoveNIC, Stack.Wait or
// Stack.Destroy: netstack calls it there while holding the stack's lock,
// and a lower endpoint that waits for a packet in flight (gVisor's fdbased
// and this project's) then waits on a goroutine that IPv4 or IPv6 blocks
// on that same lock.
func (e *Endpoint) Attach(dispatcher stack.NetworkDispatcher) {
	if dispatcher == nil {
		e.lower.Attach(nil)
		e.engine.Flush()
		e.dispatcher.Store(nil)
		return
	}
	e.dispatcher.Store(&dispatcher)
	e.lower.Attach(e.engine)
}

// IsAttached implements stack.LinkEndpoint.
func (e *Endpoint) IsAttached() bool { return e.dispatcher.Load() != nil }

// Capabilities implements stack.LinkEndpoint. In the ClaimChecksumOffload
// mode it adds CapabilityRXChecksumOffload: the engine verifies what
// netstack then skips.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	caps := e.lower.Capabilities()
	if e.claim {
		caps |= stack.CapabilityRXChecksumOffload
	}
	return caps
}

// Close implements stack.LinkEndpoint. It closes the lower endpoint, then
// stops the engine's timer and delivers what it held.
func (e *Endpoint) Close() {
	e.lower.Close()
	e.engine.Close()
}

// Wait implements stack.LinkEndpoint. Once the lower endpoint's
// goroutines are gone, nothing is left held.
func (e *Endpoint) Wait() {
	e.lower.Wait()
	e.engine.Flush()
}

// MTU implements stack.LinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.lower.MTU() }

// SetMTU implements stack.LinkEndpoint.
func (e *Endpoint) SetMTU(mtu uint32) { e.lower.SetMTU(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *Endpoint) MaxHeaderLength() uint16 { return e.lower.MaxHeaderLength() }

// LinkAddress implements stack.LinkEndpoint.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress { return e.lower.LinkAddress() }

// SetLinkAddress implements stack.LinkEndpoint.
func (e *Endpoint) SetLinkAddress(addr tcpip.LinkAddress) { e.lower.SetLinkAddress(addr) }

// WritePackets implements stack.LinkEndpoint; errors come back unchanged.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	return e.lower.WritePackets(pkts)
}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *Endpoint) ARPHardwareType() header.ARPHardwareType { return e.lower.ARPHardwareType() }

// AddHeader implements stack.LinkEndpoint.
func (e *Endpoint) AddHeader(pkt *stack.PacketBuffer) { e.lower.AddHeader(pkt) }

// ParseHeader implements stack.LinkEndpoint.
func (e *Endpoint) ParseHeader(pkt *stack.PacketBuffer) bool { return e.lower.ParseHeader(pkt) }

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *Endpoint) SetOnCloseAction(action func()) { e.lower.SetOnCloseAction(action) }

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 {
	if g, ok := e.lower.(stack.GSOEndpoint); ok {
		return g.GSOMaxSize()
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if g, ok := e.lower.(stack.GSOEndpoint); ok {
		return g.SupportedGSO()
	}
	return stack.GSONotSupported
}

// upper is the engine's view of the endpoint: the dispatcher it delivers
// to, which forwards to the NIC while one is attached.
type upper Endpoint

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (u *upper) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if d := u.dispatcher.Load(); d != nil {
		(*d).DeliverNetworkPacket(proto, pkt)
	}
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (u *upper) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if d := u.dispatcher.Load(); d != nil {
		(*d).DeliverLinkPacket(proto, pkt)
	}
}
