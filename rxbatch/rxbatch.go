// Package rxbatch holds the receive contracts between a link endpoint that
// reads frames in batches and the dispatcher above it, beyond
// stack.NetworkDispatcher: where a batch ends (Flusher), frames handed over
// as views without a PacketBuffer (FragmentDispatcher), packets handed
// over as bytes the caller keeps (BytesDispatcher), and one dispatcher per
// receive queue (MultiQueue).
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
// uses BytesDispatcher and Flusher; lro.Engine implements all four. The
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
	// it or hands it on. A packet it builds from buf is what gVisor's
	// fdbased would have built: the frame as payload, the link header
	// consumed, NetworkProtocolNumber set.
	DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer)
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
