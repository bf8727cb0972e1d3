//go:build linux

package fdbased_test

import (
	"fmt"
	"log"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/fdbased"
)

// printer is a dispatcher that takes frames as views and wants batch ends,
// as netlro's engine does.
type printer struct {
	done chan struct{}
}

func (p *printer) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	fmt.Printf("frame: %d bytes of %#04x\n", buf.Size()-int64(linkHeaderLen), proto)
	buf.Release() // DeliverFragments owns buf
}

func (p *printer) Flush() {
	fmt.Println("batch end")
	p.done <- struct{}{}
}

func (p *printer) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (p *printer) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// Example reads IPv4 packets from one end of a socketpair and hands them
// to a dispatcher that takes views and batch ends.
func Example() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Close(fds[0]) // the endpoint never closes its fds
	defer unix.Close(fds[1])

	// The peer sends three packets before the endpoint reads: one batch.
	for _, size := range []int{60, 1500, 40} {
		pkt := make([]byte, size)
		header.IPv4(pkt).Encode(&header.IPv4Fields{
			TotalLength: uint16(size),
			TTL:         64,
			Protocol:    uint8(header.UDPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 1}),
			DstAddr:     tcpip.AddrFrom4([4]byte{192, 0, 2, 2}),
		})
		if _, err := unix.Write(fds[1], pkt); err != nil {
			log.Fatal(err)
		}
	}

	ep, err := fdbased.New(&fdbased.Options{FDs: []int{fds[0]}, MTU: 1500})
	if err != nil {
		log.Fatal(err)
	}
	p := &printer{done: make(chan struct{}, 1)}
	ep.Attach(p)
	<-p.done
	ep.Close()
	ep.Wait()

	s := ep.Stats()
	fmt.Printf("%d frames, %d batch, %.0f frames per batch\n", s.Frames, s.Batches, s.MeanBatch())
	// Output:
	// frame: 60 bytes of 0x0800
	// frame: 1500 bytes of 0x0800
	// frame: 40 bytes of 0x0800
	// batch end
	// 3 frames, 1 batch, 3 frames per batch
}
