// Package rxbatch holds the receive contracts between a link endpoint that
// reads frames in batches and the dispatcher above it, beyond
// stack.NetworkDispatcher: where a batch ends (Flusher), frames handed over
// as views without a PacketBuffer (FragmentDispatcher), packets handed
// over as bytes the caller keeps (BytesDispatcher), one dispatcher per
// receive queue (MultiQueue), and which destinations netstack keeps rather
// than forwards (Locality).
//
// They are Linux NAPI's: a driver polls a batch of frames, hands them to
// GRO in pages (napi_gro_frags), and ends the poll with a GRO flush, each
// receive queue with a NAPI context and a GRO list of its own. Here the
// link endpoint is the driver and an LRO engine is GRO. Each contract is
// optional on both sides: a link endpoint finds it by a type assertion on
// the dispatcher it was attached to, and does without when the assertion
// fails; a dispatcher that implements none is a plain
// stack.NetworkDispatcher.
//
// netlro's fdbased uses Flusher, FragmentDispatcher and MultiQueue; a
// program with packets in its own buffers (examples/wireguard's lrotun)
// uses BytesDispatcher and Flusher; lro.Engine implements those four, and
// asks Locality of the dispatcher it delivers to. The
// package depends on gVisor only, so another link endpoint or another
// dispatcher can implement or use them without netlro's engine.
package rxbatch

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Flusher is implemented by a dispatcher that holds packets across
// deliveries (an LRO engine). A link endpoint calls Flush at the end of
// each batch it delivered, as Linux ends a NAPI poll with a GRO flush, so
// that nothing waits for the next batch.
type Flusher interface {
	// Flush delivers every packet the dispatcher holds.
	Flush()
}

// FragmentDispatcher is implemented by a dispatcher that takes a frame as
// the views it was read into, and builds a stack.PacketBuffer only for
// what it hands on ("receive in pages": inet_lro's lro_receive_frags,
// Linux's napi_gro_frags). A link endpoint that reads frames into views
// calls DeliverFragments instead of building a PacketBuffer and calling
// DeliverNetworkPacket.
type FragmentDispatcher interface {
	// DeliverFragments takes ownership of buf, one frame of protocol proto
	// whose first linkHeaderLen bytes are its link header, and releases
	// it or hands it on. A packet it builds from buf is NewPacket's.
	DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer)
}

// NewPacket builds the stack.PacketBuffer a FragmentDispatcher hands on for
// a frame, as gVisor's fdbased builds one for a frame it read: buf, whose
// views move into the packet, is the payload, its first linkHeaderLen
// bytes are consumed as the link header, and NetworkProtocolNumber is
// proto. verified sets RXChecksumValidated: the link endpoint verified
// the frame's checksums, as one reporting
// stack.CapabilityRXChecksumOffload does. The caller owns the returned
// reference.
func NewPacket(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer, verified bool) *stack.PacketBuffer {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	if linkHeaderLen > 0 {
		pkt.LinkHeader().Consume(linkHeaderLen)
	}
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = verified
	return pkt
}

// MultiQueue is implemented by a dispatcher with one dispatcher per receive
// queue. A link endpoint that delivers from several goroutines, one per
// receive queue, each with flows of its own (as a NIC's RSS steers each
// flow to one queue), hands queue i's frames to Queue(i), and looks for
// Flusher and FragmentDispatcher on what Queue returns: each queue's batch
// end then ends only its own held packets, as each NAPI context flushes
// only its own GRO list.
type MultiQueue interface {
	// Queue returns the dispatcher of receive queue i, i >= 0. It returns
	// the same dispatcher for the same i every time, and is safe for
	// concurrent use.
	Queue(i int) stack.NetworkDispatcher
}

// Locality is implemented by a dispatcher that can tell whether netstack
// keeps a packet addressed to addr, delivering it to its own transport
// layer, or would forward it. An LRO engine asks before it starts a
// session and merges only what netstack keeps: netstack's IP forwarding
// cannot send a merged packet on (it checks the outgoing MTU, and copies
// the packet without its GSO options).
type Locality interface {
	// DeliversLocally reports whether netstack keeps packets of protocol
	// proto addressed to addr.
	DeliversLocally(proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool
}

// LocalityOf returns what can answer Locality for packets delivered to d:
// d itself if it implements Locality; for netstack's NIC, which is what a
// link endpoint is attached to, its promiscuous mode and its addresses
// (every address while spoofing); nil if d cannot tell. Call it when d
// becomes known (in a constructor or Attach), not per packet: for a NIC
// it allocates the adapter.
func LocalityOf(d stack.NetworkDispatcher) Locality {
	switch d := d.(type) {
	case Locality:
		return d
	case nic:
		return nicLocality{d}
	}
	return nil
}

// nic is the part of netstack's NIC (a stack.NetworkInterface, the
// dispatcher a link endpoint is attached to) that knows which
// destinations it keeps.
type nic interface {
	Promiscuous() bool
	CheckLocalAddress(proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool
}

// nicLocality answers Locality for netstack's NIC.
type nicLocality struct{ n nic }

// DeliversLocally implements Locality: a promiscuous NIC keeps every
// destination, and CheckLocalAddress knows the NIC's addresses.
func (l nicLocality) DeliversLocally(proto tcpip.NetworkProtocolNumber, addr tcpip.Address) bool {
	return l.n.Promiscuous() || l.n.CheckLocalAddress(proto, addr)
}

// BytesDispatcher is implemented by a dispatcher that takes a packet as
// bytes the caller keeps: a program that reads packets into buffers it
// reuses (a VPN's Write(bufs), a socket read into one buffer) hands each
// over without copying it into a PacketBuffer first, and the dispatcher
// copies what it hands on, once. It ends each batch with Flusher's Flush
// where the dispatcher has one.
type BytesDispatcher interface {
	// DeliverBytes takes one IP packet of protocol proto, b from the
	// network header on. It never keeps b: the caller may reuse b as soon
	// as DeliverBytes returns.
	DeliverBytes(proto tcpip.NetworkProtocolNumber, b []byte)
}
