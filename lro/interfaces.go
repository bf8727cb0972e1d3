package lro

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// Flusher is called by a lower endpoint at the end of each dispatch batch
// (the end of a NAPI poll in Linux). *Engine implements it; a lower
// endpoint finds it by a type assertion on the dispatcher it was attached
// to.
type Flusher interface {
	// Flush delivers every held packet.
	Flush()
}

// FragmentDispatcher is "receive in pages" (inet_lro lro_receive_frags): a
// lower endpoint that read a frame into pooled views hands the views over
// without building a PacketBuffer. *Engine implements it.
type FragmentDispatcher interface {
	// DeliverFragments takes ownership of buf, a frame of protocol proto
	// whose first linkHeaderLen bytes are its link header.
	DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer)
}

// MultiQueue is implemented by *Engine. A lower endpoint that delivers from
// several goroutines, one per receive queue, each with flows of its own
// (as a NIC's RSS steers each flow to one queue, or as this project's
// fdbased reads each fd on its own goroutine), hands queue i's packets to
// Queue(i) and calls its Flush at the end of that queue's batches.
type MultiQueue interface {
	// Queue returns the engine of receive queue i.
	Queue(i int) *Engine
}
