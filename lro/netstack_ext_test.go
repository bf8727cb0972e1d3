package lro_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// extHeaders is what the wire inserts into every IPv6 TCP packet bound for
// the receiver: a Hop-by-Hop and a Destination Options header, each one
// PadN option, and a Routing header with no segments left. None changes
// the TCP checksum, whose pseudo-header has no extension headers in it.
var extHeaders = []byte{
	testpacket.IPv6Routing, 0, 1, 4, 0, 0, 0, 0, // Hop-by-Hop: PadN(4)
	testpacket.IPv6DestOptions, 0, 0, 0, 0, 0, 0, 0, // Routing: type 0, 0 segments left
	6, 0, 1, 4, 0, 0, 0, 0, // Destination Options: PadN(4), then TCP
}

// insertExtensions returns b with extHeaders after its fixed IPv6 header.
func insertExtensions(b []byte) []byte {
	if len(b) < header.IPv6MinimumSize || b[6] != uint8(header.TCPProtocolNumber) {
		return b
	}
	out := append(append(bytes.Clone(b[:header.IPv6MinimumSize]), extHeaders...), b[header.IPv6MinimumSize:]...)
	ip := header.IPv6(out)
	ip.SetNextHeader(testpacket.IPv6HopByHop)
	ip.SetPayloadLength(ip.PayloadLength() + uint16(len(extHeaders)))
	return out
}

// TestNetstackAcceptsMergedExtensions runs a TCP transfer into netstack
// through the engine, over a wire that adds IPv6 extension headers to
// every data packet: the segments merge, netstack accepts every merged
// packet (no checksum or header error) and the stream arrives intact.
func TestNetstackAcceptsMergedExtensions(t *testing.T) {
	for _, cfg := range []lro.Config{{}, {Resegmentable: true}, {ClaimChecksumOffload: true}} {
		t.Run(fmt.Sprintf("resegmentable=%v/claim=%v", cfg.Resegmentable, cfg.ClaimChecksumOffload), func(t *testing.T) {
			txLink, rxLink := channel.New(512, 1500, ""), channel.New(512, 1500, "")
			e, err := lroendpoint.New(rxLink, cfg)
			require.NoError(t, err)
			tx := newIPv6Stack(t, txLink, testpacket.Src6)
			rx := newIPv6Stack(t, e, testpacket.Dst6)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { wire(ctx, txLink, rxLink, insertExtensions) })
			wg.Go(func() { wire(ctx, rxLink, txLink, func(b []byte) []byte { return b }) })
			defer func() {
				cancel()
				wg.Wait()
				tx.Close()
				rx.Close()
				tx.Wait()
				rx.Wait()
			}()

			data := testpacket.Payload(17, 2<<20)
			got := testpacket.Transfer(t, tx, rx, tcpip.FullAddress{NIC: 1, Addr: testpacket.Dst6, Port: 5201}, header.IPv6ProtocolNumber, data)
			require.Equal(t, sha256.Sum256(data), got, "SHA-256 of the stream")

			st := e.Stats()
			assert.NotZero(t, st.MergedPackets, "merged packets reached netstack")
			assert.Zero(t, st.PassIPOptions, "no packet passed for its extension headers")
			assert.Zero(t, rx.Stats().TCP.ChecksumErrors.Value())
			assert.Zero(t, rx.Stats().IP.MalformedPacketsReceived.Value())
			assert.Zero(t, rx.Stats().IP.InvalidDestinationAddressesReceived.Value())
		})
	}
}

func newIPv6Stack(t *testing.T, ep stack.LinkEndpoint, addr tcpip.Address) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	require.Nil(t, s.CreateNIC(1, ep))
	require.Nil(t, s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: header.IPv6ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}))
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: 1}})
	return s
}

// wire moves packets from one channel endpoint to the other, rewritten
// by f.
func wire(ctx context.Context, from, to *channel.Endpoint, f func([]byte) []byte) {
	for {
		pkt := from.ReadContext(ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		b := f(bytes.Clone(v.AsSlice()))
		v.Release()
		proto := pkt.NetworkProtocolNumber
		pkt.DecRef()
		in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
		to.InjectInbound(proto, in)
		in.DecRef()
	}
}
