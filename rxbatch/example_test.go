package rxbatch_test

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// deliverBatch is a link endpoint's side: it hands one batch of IP
// packets, read by receive queue queue, to the dispatcher d it was
// attached to, using whichever contracts d implements.
func deliverBatch(d stack.NetworkDispatcher, queue int, frames [][]byte) {
	if mq, ok := d.(rxbatch.MultiQueue); ok {
		d = mq.Queue(queue)
	}
	frag, _ := d.(rxbatch.FragmentDispatcher)
	for _, f := range frames {
		proto := header.IPv4ProtocolNumber
		if header.IPVersion(f) == header.IPv6Version {
			proto = header.IPv6ProtocolNumber
		}
		buf := buffer.MakeWithData(f) // a real endpoint reads into pooled views
		if frag != nil {
			frag.DeliverFragments(proto, 0, buf) // no link header here
			continue
		}
		pkt := rxbatch.NewPacket(proto, 0, buf, false) // checksums not verified here
		d.DeliverNetworkPacket(proto, pkt)
		pkt.DecRef()
	}
	if f, ok := d.(rxbatch.Flusher); ok {
		f.Flush()
	}
}

// queue is a dispatcher's side: one receive queue's dispatcher, which
// takes frames as views and counts them until the batch ends.
type queue struct {
	name           string
	frames, octets int
}

// DeliverFragments implements rxbatch.FragmentDispatcher.
func (q *queue) DeliverFragments(_ tcpip.NetworkProtocolNumber, _ int, buf buffer.Buffer) {
	q.frames++
	q.octets += int(buf.Size())
	buf.Release() // it took ownership
}

// Flush implements rxbatch.Flusher.
func (q *queue) Flush() {
	fmt.Printf("%s: batch of %d frames, %d bytes\n", q.name, q.frames, q.octets)
	q.frames, q.octets = 0, 0
}

// DeliverNetworkPacket implements stack.NetworkDispatcher; deliverBatch
// calls DeliverFragments instead.
func (q *queue) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (q *queue) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// queues is a dispatcher with a queue dispatcher per receive queue.
type queues []*queue

// Queue implements rxbatch.MultiQueue.
func (qs queues) Queue(i int) stack.NetworkDispatcher { return qs[i%len(qs)] }

// DeliverNetworkPacket implements stack.NetworkDispatcher for a link
// endpoint that knows no queues: queue 0 takes its packets.
func (qs queues) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	qs[0].DeliverNetworkPacket(proto, pkt)
}

// DeliverLinkPacket implements stack.NetworkDispatcher.
func (qs queues) DeliverLinkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	qs[0].DeliverLinkPacket(proto, pkt)
}

// ipv4 returns an IPv4 packet with payload bytes after its header, built
// with gVisor's header package.
func ipv4(payload int) []byte {
	b := make([]byte, header.IPv4MinimumSize+payload)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.UDPProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 1}),
		DstAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 2}),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// A link endpoint with two receive queues delivers a batch on each; each
// queue's dispatcher gets its frames as views and its own batch end. An
// lro.Engine in place of queues merges TCP segments in the same way.
func Example() {
	d := queues{{name: "queue 0"}, {name: "queue 1"}}
	deliverBatch(d, 1, [][]byte{ipv4(100), ipv4(100), ipv4(1000)})
	deliverBatch(d, 0, [][]byte{ipv4(60)})
	// Output:
	// queue 1: batch of 3 frames, 1260 bytes
	// queue 0: batch of 1 frames, 80 bytes
}
