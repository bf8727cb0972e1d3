package lro_test

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
)

// printer stands in for netstack's NIC.
type printer struct{}

func (printer) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	_, payload, err := testpacket.Check(testpacket.Bytes(pkt))
	fmt.Printf("netstack gets %d payload bytes, checksums ok: %v\n", len(payload), err == nil)
}

func (printer) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// An Engine sits where a link endpoint would call the NIC. Three in-order
// segments, one of odd length, reach netstack as one packet when the batch
// ends.
func Example() {
	e, err := lro.New(printer{}, lro.Config{FlushDelay: -1}) // flushed by hand below
	if err != nil {
		panic(err)
	}
	defer e.Close()
	for _, seg := range testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 3001), 1448) {
		pkt := testpacket.NewPacket(seg)
		e.DeliverNetworkPacket(testpacket.Proto(seg), pkt)
		pkt.DecRef() // the engine took its own reference
	}
	e.Flush() // the lower endpoint's batch end
	fmt.Println(e.Stats())
	// Output:
	// netstack gets 3001 payload bytes, checksums ok: true
	// in 3 out 1 merged 2 segments into 1 packets (3.0:1)
	// flush: batch 1
}
