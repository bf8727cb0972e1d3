package lroendpoint

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/linkgate"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/rxbatch"
)

// Endpoint is a stack.LinkEndpoint that puts an lro.Engine between a lower
// endpoint and the NIC. It forwards everything it does not change, in the
// spirit of gVisor's link/nested: it adds CapabilityRXChecksumOffload in
// the ClaimChecksumOffload mode, and detaching releases what the engine
// held.
//
// The lower endpoint is attached to the engine itself, so a lower endpoint
// that knows rxbatch.Flusher, rxbatch.FragmentDispatcher or
// rxbatch.MultiQueue (this project's fdbased) finds them by a type
// assertion on its dispatcher.
//
// Teardown works in the order netstack and its users call it, under
// traffic: Stack.Destroy, Stack.RemoveNIC, Close, Attach(nil) and Wait, in
// any order. netstack calls Attach(nil) and Wait while holding its own
// lock, which a packet on its way in may be waiting for (a reset's route
// lookup), and a lower endpoint that stops its goroutines waits for that
// packet. So Attach(nil) and Wait never wait for a packet inside netstack:
// when one is, the lower endpoint is detached in the background as soon as
// it is out, and Close, which netstack calls without its lock, waits for
// that.
type Endpoint struct {
	lower  stack.LinkEndpoint
	engine *lro.Engine
	claim  bool
	gate   *linkgate.Gate // to the NIC, while attached
	// locality answers rxbatch.Locality for the NIC attached now, if it
	// can tell; nil while detached.
	locality atomic.Pointer[rxbatch.Locality]
}

var (
	_ stack.LinkEndpoint      = (*Endpoint)(nil)
	_ stack.GSOEndpoint       = (*Endpoint)(nil)
	_ rxbatch.Flusher         = (*Endpoint)(nil)
	_ rxbatch.BytesDispatcher = (*Endpoint)(nil)
	_ rxbatch.Locality        = (*upper)(nil)
)

// New wraps lower with an engine configured by cfg. If lower reports
// stack.CapabilityRXChecksumOffload, the engine trusts its checksums
// (cfg.TrustChecksums).
func New(lower stack.LinkEndpoint, cfg lro.Config) (*Endpoint, error) {
	e := &Endpoint{lower: lower, claim: cfg.ClaimChecksumOffload}
	e.gate = linkgate.New(linkgate.Hooks{
		Start:  func() { e.lower.Attach(e.engine) },
		Finish: e.detachLower,
	})
	if lower.Capabilities()&stack.CapabilityRXChecksumOffload != 0 {
		cfg.TrustChecksums = true
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

// Flush implements rxbatch.Flusher: it delivers every held packet.
func (e *Endpoint) Flush() { e.engine.Flush() }

// DeliverBytes implements rxbatch.BytesDispatcher: it hands b, one IP
// packet of protocol proto from the network header on, to the engine,
// which copies what it keeps (a merging segment's payload only) and never
// keeps b, so the caller may reuse b as soon as it returns. It is the way
// in for a program that holds packets in buffers of its own, instead of a
// PacketBuffer per packet injected into the lower endpoint; end each
// batch with Flush. Checksums are verified unless the lower endpoint
// reports stack.CapabilityRXChecksumOffload. While the endpoint is not
// attached, packets are dropped.
func (e *Endpoint) DeliverBytes(proto tcpip.NetworkProtocolNumber, b []byte) {
	e.engine.DeliverBytes(proto, b)
}

// SetMerging turns merging off (false) or back on (true) while traffic
// flows, for an A/B comparison in production; see lro.Engine.SetMerging.
// Nothing is lost or reordered at the switch.
func (e *Endpoint) SetMerging(on bool) { e.engine.SetMerging(on) }

// Merging reports whether merging is on, as it is after New.
func (e *Endpoint) Merging() bool { return e.engine.Merging() }

// Lower returns the wrapped endpoint.
func (e *Endpoint) Lower() stack.LinkEndpoint { return e.lower }

// Attach implements stack.LinkEndpoint. The lower endpoint is attached to
// the engine, not to the endpoint.
//
// Attach(nil) stops deliveries to the old dispatcher at once. If no
// packet is inside netstack, it then detaches the lower endpoint;
// otherwise a background goroutine does as soon as the packet is out, and
// Close waits for it. Either way what the engine held is released, not
// delivered: netstack calls Attach(nil) while holding its lock, and has
// disabled the NIC, which would drop them anyway.
func (e *Endpoint) Attach(dispatcher stack.NetworkDispatcher) {
	if dispatcher == nil {
		e.gate.Attach(nil)
		e.locality.Store(nil)
		return
	}
	if l := rxbatch.LocalityOf(dispatcher); l != nil {
		e.locality.Store(&l)
	} else {
		e.locality.Store(nil)
	}
	e.gate.Attach(dispatcher)
}

// detachLower is the gate's Finish: it detaches the lower endpoint once
// no packet of ours is inside netstack, and releases what the engine held
// by flushing it into the closed gate. It never delivers into netstack: a
// goroutine holding netstack's lock may be waiting for the detach. If an
// Attach opened the gate again meanwhile, the lower endpoint stays
// attached to the engine, as wanted.
func (e *Endpoint) detachLower() {
	if e.gate.IsAttached() {
		return
	}
	e.lower.Attach(nil)
	e.engine.Flush()
}

// IsAttached implements stack.LinkEndpoint.
func (e *Endpoint) IsAttached() bool { return e.gate.IsAttached() }

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

// Close implements stack.LinkEndpoint. It detaches, as Attach(nil) does,
// and waits for the lower endpoint's goroutines to stop (some lower
// endpoints, gVisor's fdbased among them, stop them only on Attach(nil)),
// then closes the lower endpoint, stops the engine's timer and releases
// what it held. netstack calls Close without its lock; a caller that
// holds it must not.
func (e *Endpoint) Close() {
	e.gate.Close()
	e.locality.Store(nil)
	e.lower.Close()
	e.engine.Close()
}

// Wait implements stack.LinkEndpoint: it waits for the lower endpoint's
// goroutines, then delivers what the engine held. While a background
// detach waits for a packet inside netstack, whose lock the caller may
// hold (Stack.Wait holds it), it returns at once; Close waits instead.
func (e *Endpoint) Wait() {
	if e.gate.Stopping() {
		return
	}
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
	if d := u.gate.Enter(); d != nil {
		d.DeliverNetworkPacket(proto, pkt)
		u.gate.Leave()
	}
}

// DeliversLocally implements rxbatch.Locality, which the engine asks
// before it starts a session: by the dispatcher attached now (netstack's
// NIC), if it can tell, whether netstack keeps packets for addr or would
// forward them.
func (u *upper) DeliversLocally(proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool {
	if l := u.locality.Load(); l != nil {
		return (*l).DeliversLocally(proto, addr)
	}
	return true
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (u *upper) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if d := u.gate.Enter(); d != nil {
		d.DeliverLinkPacket(proto, pkt)
		u.gate.Leave()
	}
}
