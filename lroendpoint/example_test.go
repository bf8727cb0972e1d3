package lroendpoint_test

import (
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// Wrap a link endpoint so that netstack receives merged TCP packets: the
// one-line integration is lroendpoint.New around the endpoint you would
// have given to CreateNIC.
func Example() {
	link := channel.New(64, 1500, "")
	// A channel endpoint never ends a batch, so the engine would flush on
	// a timer; this example turns the timer off and flushes by hand.
	ep, err := lroendpoint.New(link, lro.Config{FlushDelay: -1})
	if err != nil {
		panic(err)
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	defer func() {
		s.Close()
		s.Wait()
	}()
	if err := s.CreateNIC(1, ep); err != nil {
		panic(err)
	}

	// Ten in-order segments arrive, then the batch ends.
	for _, seg := range testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 14480), 1448) {
		pkt := testpacket.NewPacket(seg)
		link.InjectInbound(testpacket.Proto(seg), pkt)
		pkt.DecRef()
	}
	ep.Flush()
	st := ep.Stats()
	fmt.Printf("%d segments in, %d packet into netstack\n", st.PacketsIn, st.PacketsOut)
	// Output: 10 segments in, 1 packet into netstack
}
