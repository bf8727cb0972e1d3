//go:build linux

package fdbased_test

import (
	"fmt"
	"log"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/fdbased"
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

// nic stands in for netstack's NIC, so that the example can print what
// netstack would get and wait for it.
type nic struct{ got chan int }

func (n nic) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	n.got <- pkt.Data().Size()
}

func (nic) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// The fast path: this package's endpoint reads the frames an fd has ready
// in one batch, hands them to lroendpoint's engine as pooled views and ends
// the batch with a Flush, so the segments of one batch leave as one packet
// without waiting for a timer. The fd here is one end of a socketpair whose
// other end plays the peer; a TAP or TUN device or an AF_PACKET socket is
// used the same way (see Options).
func Example() {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		log.Fatal(err)
	}
	defer unix.Close(fds[0]) // the endpoint never closes its fds
	defer unix.Close(fds[1])

	// The peer sends three in-order segments before the endpoint reads:
	// one batch.
	payload := make([]byte, 1448)
	for i := range uint32(3) {
		if _, err := unix.Write(fds[1], tcpSegment(1+i*1448, payload)); err != nil {
			log.Fatal(err)
		}
	}

	ep, err := fdbased.New(&fdbased.Options{FDs: []int{fds[0]}, MTU: 1500})
	if err != nil {
		log.Fatal(err)
	}
	// This endpoint ends every batch with a Flush, so the engine needs no
	// flush timer.
	lep, err := lroendpoint.New(ep, lro.Config{FlushDelay: -1})
	if err != nil {
		log.Fatal(err)
	}
	// A program calls s.CreateNIC(1, lep) here, which attaches lep to the
	// stack's NIC.
	n := nic{got: make(chan int, 3)}
	lep.Attach(n)
	fmt.Printf("netstack gets one packet of %d bytes\n", <-n.got)
	lep.Close()
	lep.Wait()

	fs := ep.Stats() // the reader's counters
	fmt.Printf("%d frames read in %d batch\n", fs.Frames, fs.Batches)
	st := lep.Stats() // the engine's
	fmt.Printf("%d segments in, %d packet out, at the batch end: %v\n", st.PacketsIn, st.PacketsOut, st.FlushBatch == 1)
	// Output:
	// netstack gets one packet of 4384 bytes
	// 3 frames read in 1 batch
	// 3 segments in, 1 packet out, at the batch end: true
}
