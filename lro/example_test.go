package lro_test

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/lro"
)

var (
	src = tcpip.AddrFrom4([4]byte{192, 0, 2, 1})
	dst = tcpip.AddrFrom4([4]byte{192, 0, 2, 2})
)

// segment returns an IPv4 packet carrying one TCP segment from src:1000 to
// dst:2000, with valid checksums and no TCP options.
func segment(seq uint32, flags header.TCPFlags, payload []byte) []byte {
	const hdrLen = header.IPv4MinimumSize + header.TCPMinimumSize
	b := make([]byte, hdrLen+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(b)),
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     src,
		DstAddr:     dst,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(b[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    1000,
		DstPort:    2000,
		SeqNum:     seq,
		AckNum:     1,
		DataOffset: header.TCPMinimumSize,
		Flags:      flags,
		WindowSize: 65535,
	})
	copy(tcp.Payload(), payload)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^tcp.CalculateChecksum(checksum.Checksum(payload, sum)))
	return b
}

// nic stands in for netstack's NIC, where an Engine delivers.
type nic struct{}

func (nic) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	ip := header.IPv4(pkt.Data().AsRange().ToSlice())
	tcp := header.TCP(ip.Payload())
	payload := tcp.Payload()
	valid := ip.IsChecksumValid() && tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(),
		checksum.Checksum(payload, 0), uint16(len(payload)))
	fmt.Printf("netstack gets seq %d, %d payload bytes, checksums valid: %v\n",
		tcp.SequenceNumber(), len(payload), valid)
}

func (nic) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// An Engine sits where a link endpoint would call the NIC. Three in-order
// data segments of one flow reach netstack as one packet, with its
// checksums rewritten; a pure ACK of the same flow cannot merge, so the
// held packet goes first and the ACK follows it unchanged.
func Example() {
	e, err := lro.New(nic{}, lro.Config{FlushDelay: -1}) // flushed by hand below
	if err != nil {
		panic(err)
	}
	defer e.Close()

	deliver := func(b []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		e.DeliverNetworkPacket(header.IPv4ProtocolNumber, pkt)
		pkt.DecRef() // the engine takes its own reference if it keeps the packet
	}
	payload := make([]byte, 1448)
	for i := range uint32(3) {
		deliver(segment(1000+i*1448, header.TCPFlagAck, payload))
	}
	deliver(segment(1000+3*1448, header.TCPFlagAck, nil)) // a pure ACK passes through
	e.Flush()                                             // the lower endpoint's batch end

	st := e.Stats()
	fmt.Printf("%d packets in, %d out, %d segments merged\n", st.PacketsIn, st.PacketsOut, st.SegmentsMerged)
	// Output:
	// netstack gets seq 1000, 4344 payload bytes, checksums valid: true
	// netstack gets seq 5344, 0 payload bytes, checksums valid: true
	// 4 packets in, 2 out, 2 segments merged
}
