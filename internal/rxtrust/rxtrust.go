// Package rxtrust carries facts from lroendpoint to the lro.Engine it
// makes, without settings users see: whether the link endpoint below the
// engine verified the checksums of every packet it delivers, and whether
// netstack delivers a packet to itself or would forward it.
//
// A PacketBuffer says so itself (RXChecksumValidated), but a frame handed
// over as views (rxbatch.FragmentDispatcher) has no such flag, and not
// every link endpoint that reports stack.CapabilityRXChecksumOffload sets
// the flag on its packets. lroendpoint knows the lower endpoint's
// capabilities; lro.New asks the dispatcher it delivers to.
package rxtrust

import "gvisor.dev/gvisor/pkg/tcpip"

// Lower is implemented by a dispatcher above an lro.Engine that knows the
// link endpoint below the engine: lroendpoint's.
type Lower interface {
	// LowerVerifiesChecksums reports whether the link endpoint below the
	// engine verified the checksums of every packet it delivers, as one
	// reporting stack.CapabilityRXChecksumOffload does.
	LowerVerifiesChecksums() bool
}

// Local is implemented by a dispatcher above an lro.Engine that can tell
// whether netstack delivers a packet addressed to addr to its own
// transport layer: lroendpoint's, through the NIC it is attached to, and
// the NIC itself. Netstack's IP forwarding cannot send a merged packet on
// (it checks the outgoing MTU and copies the packet without its GSO
// options), so the engine merges only what netstack keeps.
type Local interface {
	DeliversLocally(proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool
}

// NIC is the part of netstack's NIC (the dispatcher a link endpoint is
// attached to, a stack.NetworkInterface) that answers Local: a
// promiscuous NIC delivers every destination to itself, and
// CheckLocalAddress knows the NIC's addresses (and says yes to every
// address while spoofing).
type NIC interface {
	Promiscuous() bool
	CheckLocalAddress(proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool
}

// DeliversLocally answers Local for n.
func DeliversLocally(n NIC, proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool {
	return n.Promiscuous() || n.CheckLocalAddress(proto, addr)
}
