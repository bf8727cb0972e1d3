package lroendpoint_test

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// tcpSegment returns an IPv4 packet carrying one TCP data segment from
// 192.0.2.1:1000 to 192.0.2.2:2000, with valid checksums.
func tcpSegment(seq uint32, payload []byte) []byte {
	src := tcpip.AddrFrom4([4]byte{192, 0, 2, 1})
	dst := tcpip.AddrFrom4([4]byte{192, 0, 2, 2})
	b := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	t := header.TCP(ip.Payload())
	t.Encode(&header.TCPFields{
		SrcPort:    1000,
		DstPort:    2000,
		SeqNum:     seq,
		AckNum:     1,
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagAck,
		WindowSize: 65535,
	})
	copy(t.Payload(), payload)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(t)))
	t.SetChecksum(^t.CalculateChecksum(checksum.Checksum(payload, sum)))
	return b
}

// Wrap the link endpoint you would have given to CreateNIC. Here the
// lower endpoint is gVisor's channel endpoint, into which the program
// injects its own packets. A channel endpoint never ends a batch, so the
// program calls Flush after each batch it injects, and turns the flush
// timer off: with it on, a held packet is delivered DefaultFlushDelay
// after it arrived, and a loop slower than that would split its merges.
func Example() {
	link := channel.New(64, 1500, "")
	ep, err := lroendpoint.New(link, lro.Config{FlushDelay: -1})
	if err != nil {
		panic(err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	defer s.Destroy()
	if err := s.CreateNIC(1, ep); err != nil {
		panic(err)
	}
	// netstack keeps what is addressed to it; the engine merges only that.
	addr := tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFrom4([4]byte{192, 0, 2, 2}).WithPrefix(),
	}
	if err := s.AddProtocolAddress(1, addr, stack.AddressProperties{}); err != nil {
		panic(err)
	}

	// One batch: ten in-order segments of one flow, then the batch end.
	payload := make([]byte, 1448)
	for i := range uint32(10) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			Payload: buffer.MakeWithData(tcpSegment(1+i*1448, payload)),
		})
		link.InjectInbound(header.IPv4ProtocolNumber, pkt)
		pkt.DecRef()
	}
	ep.Flush()

	st := ep.Stats()
	fmt.Printf("%d segments in, %d packet out\n", st.PacketsIn, st.PacketsOut)
	fmt.Printf("netstack received %d IP packet\n", s.Stats().IP.PacketsReceived.Value())
	// Output:
	// 10 segments in, 1 packet out
	// netstack received 1 IP packet
}
