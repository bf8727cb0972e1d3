package linkgate_test

import (
	"fmt"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/linkgate"
)

// reader is the receiving half of a link endpoint with a goroutine of its
// own: it delivers each frame from in through its gate, and stops when
// told.
type reader struct {
	gate *linkgate.Gate
	in   chan []byte
	quit chan struct{}
	done sync.WaitGroup
}

func newReader(in chan []byte) *reader {
	r := &reader{in: in}
	r.gate = linkgate.New(linkgate.Hooks{
		Start: func() { // the first Attach: start reading
			r.quit = make(chan struct{})
			r.done.Go(r.loop)
		},
		Stop:   func() { close(r.quit) }, // Attach(nil): never waits
		Finish: r.done.Wait,              // once no frame is inside netstack
	})
	return r
}

func (r *reader) loop() {
	for {
		select {
		case <-r.quit:
			return
		case b := <-r.in:
			d := r.gate.Enter()
			if d == nil {
				continue // detached: the frame is dropped
			}
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
			d.DeliverNetworkPacket(header.IPv4ProtocolNumber, pkt)
			pkt.DecRef()
			r.gate.Leave()
		}
	}
}

// counter stands for netstack's NIC.
type counter struct {
	n    int
	seen chan struct{}
}

func (c *counter) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	c.n++
	c.seen <- struct{}{}
}

func (c *counter) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// Example shows the receiving half of a link endpoint whose Attach,
// Wait and Close are the gate's: Attach(nil) under traffic returns at once,
// and Close waits for the reader to stop.
func Example() {
	in := make(chan []byte)
	r := newReader(in)
	nic := &counter{seen: make(chan struct{}, 1)}

	r.gate.Attach(nic) // the endpoint's Attach: starts the reader
	for range 3 {
		in <- make([]byte, header.IPv4MinimumSize)
		<-nic.seen
	}
	r.gate.Attach(nil) // the endpoint's Attach(nil), as RemoveNIC calls it
	fmt.Println("attached:", r.gate.IsAttached(), "delivered:", nic.n)
	r.gate.Close() // the endpoint's Close: waits for what Attach(nil) left
	// Output: attached: false delivered: 3
}
