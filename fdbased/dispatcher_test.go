package fdbased

import (
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// MAC addresses of the tests' frames.
var (
	ourMAC   = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x01")
	peerMAC  = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x02")
	otherMAC = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x03")
)

// Fake dispatchers for the two delivery paths. Each records what it got,
// in order, with batch ends among the frames.

// event is one call a dispatcher got.
type event struct {
	flush     bool // a batch end; the fields below are zero
	fragments bool // came by DeliverFragments
	proto     tcpip.NetworkProtocolNumber
	pktProto  tcpip.NetworkProtocolNumber // the packet's NetworkProtocolNumber
	link      []byte                      // the link header
	data      []byte                      // the frame after the link header
	views     int                         // views in the buffer or packet
	validated bool                        // RXChecksumValidated
}

// recorder records events and wakes waiters after each.
type recorder struct {
	mu sync.Mutex
	// +checklocks:mu
	events []event
	notify chan struct{}
}

func newRecorder() *recorder {
	return &recorder{notify: make(chan struct{}, 1)}
}

func (r *recorder) add(ev event) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// snapshot returns a copy of the events so far.
func (r *recorder) snapshot() []event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]event(nil), r.events...)
}

// frames returns the delivered frames so far, without batch ends.
func (r *recorder) frames() []event {
	var out []event
	for _, ev := range r.snapshot() {
		if !ev.flush {
			out = append(out, ev)
		}
	}
	return out
}

// DeliverNetworkPacket records pkt as gVisor's NIC would see it.
func (r *recorder) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	views, _ := pkt.AsViewList()
	r.add(event{
		proto:     proto,
		pktProto:  pkt.NetworkProtocolNumber,
		link:      append([]byte(nil), pkt.LinkHeader().Slice()...),
		data:      pkt.Data().AsRange().ToSlice(),
		views:     views.Len(),
		validated: pkt.RXChecksumValidated,
	})
}

// DeliverLinkPacket is never called by the endpoint.
func (r *recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	panic("DeliverLinkPacket called")
}

// plainDispatcher is a stack.NetworkDispatcher and nothing more, like
// gVisor's NIC.
type plainDispatcher struct{ *recorder }

// flushDispatcher also ends batches, like an engine that takes packets.
type flushDispatcher struct{ *recorder }

func (d flushDispatcher) Flush() { d.add(event{flush: true}) }

// fragDispatcher takes views and ends batches, like lro.Engine.
type fragDispatcher struct{ *recorder }

func (d fragDispatcher) Flush() { d.add(event{flush: true}) }

func (d fragDispatcher) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	views := buf.AsViewList()
	n := views.Len()
	frame := buf.Flatten()
	buf.Release()
	d.add(event{
		fragments: true,
		proto:     proto,
		link:      frame[:linkHeaderLen],
		data:      frame[linkHeaderLen:],
		views:     n,
	})
}

// dispatcherKinds names the fake dispatchers for table-driven tests.
var dispatcherKinds = []struct {
	name string
	make func(*recorder) stack.NetworkDispatcher
}{
	{"plain", func(r *recorder) stack.NetworkDispatcher { return plainDispatcher{r} }},
	{"flusher", func(r *recorder) stack.NetworkDispatcher { return flushDispatcher{r} }},
	{"fragments", func(r *recorder) stack.NetworkDispatcher { return fragDispatcher{r} }},
}
