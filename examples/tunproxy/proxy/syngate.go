//go:build linux

package proxy

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	gtcp "gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// synGate is the link endpoint the proxy's NIC is created on: the
// path's endpoint, with one look at each packet on its way in. A
// client's SYN for ports that netstack still holds an endpoint of in
// TIME-WAIT (for as long as its timer takes to fire: the proxy keeps no
// TIME-WAIT) or closed is dropped there, and the client sends it again a
// second later, when the endpoint is gone and the forwarder takes it.
//
// Let into netstack, the SYN would wait in that endpoint's queue, and
// when the endpoint closes, gVisor hands what is queued to another
// endpoint of the same ports or answers it with a reset
// (tryDeliverSegmentFromClosedEndpoint in tcp/connect.go), never to a
// tcp.Forwarder: the client's connect was refused. A Linux client reuses
// a port that quickly now and then (about once in 100,000 to 250,000
// connections of ab -c 100 through the proxy, which then stopped).
type synGate struct {
	nested.Endpoint
	s        *stack.Stack
	deferred atomic.Uint64
	open     atomic.Bool // tests: let every SYN in, to show gVisor's own behaviour
}

// newSYNGate wraps link for s's NIC.
func newSYNGate(link stack.LinkEndpoint, s *stack.Stack) *synGate {
	g := &synGate{s: s}
	g.Init(link, g)
	return g
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (g *synGate) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if !g.open.Load() && g.heldSYN(proto, pkt) {
		g.deferred.Add(1)
		return
	}
	g.Endpoint.DeliverNetworkPacket(proto, pkt)
}

// heldSYN reports whether pkt is a SYN (without ACK) whose ports netstack
// still holds an endpoint of in TIME-WAIT or closed. It looks only at a TCP header right after
// the IP header, which is where a client's SYN has it.
func (g *synGate) heldSYN(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) bool {
	var id stack.TransportEndpointID
	var tcp header.TCP
	switch proto {
	case header.IPv4ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv4MinimumSize)
		if !ok {
			return false
		}
		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		if ip.Protocol() != uint8(header.TCPProtocolNumber) || ip.FragmentOffset() != 0 || ip.More() || hl < header.IPv4MinimumSize {
			return false
		}
		if b, ok = pkt.Data().PullUp(hl + header.TCPMinimumSize); !ok {
			return false
		}
		ip, tcp = header.IPv4(b), header.TCP(b[hl:])
		id.LocalAddress, id.RemoteAddress = ip.DestinationAddress(), ip.SourceAddress()
	case header.IPv6ProtocolNumber:
		b, ok := pkt.Data().PullUp(header.IPv6MinimumSize + header.TCPMinimumSize)
		if !ok {
			return false
		}
		ip := header.IPv6(b)
		if ip.NextHeader() != uint8(header.TCPProtocolNumber) {
			return false
		}
		tcp = header.TCP(b[header.IPv6MinimumSize:])
		id.LocalAddress, id.RemoteAddress = ip.DestinationAddress(), ip.SourceAddress()
	default:
		return false
	}
	if tcp.Flags()&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst) != header.TCPFlagSyn {
		return false
	}
	id.LocalPort, id.RemotePort = tcp.DestinationPort(), tcp.SourcePort()
	ep, ok := g.s.FindTransportEndpoint(proto, header.TCPProtocolNumber, id, nicID).(*gtcp.Endpoint)
	if !ok {
		return false
	}
	// Only an endpoint on its way out. A SYN for one still connected
	// goes in: netstack answers it with a challenge ACK, and a client
	// that restarted resets the stale connection (RFC 5961); one in a
	// handshake answers it with its SYN-ACK again.
	switch gtcp.EndpointState(ep.State()) {
	case gtcp.StateTimeWait, gtcp.StateClose, gtcp.StateError:
		return true
	}
	return false
}
