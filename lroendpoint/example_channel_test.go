package lroendpoint_test

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// A program that feeds netstack itself, in batches of its own, with each
// packet in a buffer it reuses (a TUN reader that gets many packets per
// read, as wireguard-go's Write(bufs) or Tailscale's batches do), hands
// each packet to the wrapper as bytes with DeliverBytes, which copies
// only what it keeps and never keeps the buffer, and calls the wrapper's
// Flush when its batch ends: held packets then go up at once, and no
// timer is needed (FlushDelay -1). What netstack sends comes out of the
// channel.Endpoint under the wrapper. Here the packets come from a second
// netstack over a channel endpoint, and a real TCP transfer runs between
// the two.
func Example_ownBatches() {
	const mtu = 1500
	serverAddr := tcpip.AddrFrom4([4]byte{192, 0, 2, 2})
	clientAddr := tcpip.AddrFrom4([4]byte{192, 0, 2, 1})

	// The receiving side: a channel endpoint, wrapped, under netstack.
	rxLink := channel.New(1024, mtu, "")
	rxEP, err := lroendpoint.New(rxLink, lro.Config{FlushDelay: -1})
	if err != nil {
		panic(err)
	}
	server := newStack(rxEP, serverAddr)
	// The sending side: a plain netstack whose packets we read.
	txLink := channel.New(1024, mtu, "")
	client := newStack(txLink, clientAddr)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	// Client to server, in batches of up to 64 packets, each read into
	// one reused buffer: hand each over as bytes, then Flush at the
	// batch's end.
	go func() {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, mtu)
		for {
			pkt := txLink.ReadContext(ctx) // wait for the batch's first packet
			for n := 0; pkt != nil; n++ {
				v := pkt.ToView()
				b := buf[:copy(buf, v.AsSlice())] // as a TUN read fills it
				v.Release()
				proto := pkt.NetworkProtocolNumber
				pkt.DecRef()
				rxEP.DeliverBytes(proto, b) // buf is ours again on return
				if n == 63 {
					break
				}
				pkt = txLink.Read() // nil: nothing more queued, the batch ends
			}
			rxEP.Flush()
			if ctx.Err() != nil {
				return
			}
		}
	}()
	// Server to client (ACKs): one packet at a time, nothing to merge.
	go func() {
		defer func() { done <- struct{}{} }()
		for pkt := rxLink.ReadContext(ctx); pkt != nil; pkt = rxLink.ReadContext(ctx) {
			forward(txLink, pkt)
		}
	}()

	addr := tcpip.FullAddress{NIC: 1, Addr: serverAddr, Port: 5201}
	ln, err := gonet.ListenTCP(server, addr, ipv4.ProtocolNumber)
	if err != nil {
		panic(err)
	}
	data := bytes.Repeat([]byte("netlro "), 1<<18) // 1.75 MiB
	go func() {
		c, err := gonet.DialTCP(client, addr, ipv4.ProtocolNumber)
		if err != nil {
			panic(err)
		}
		if _, err := c.Write(data); err != nil {
			panic(err)
		}
		c.Close()
	}()
	c, err := ln.Accept()
	if err != nil {
		panic(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		panic(err)
	}
	c.Close()
	ln.Close()

	cancel()
	<-done
	<-done
	for _, s := range []*stack.Stack{client, server} {
		s.Close()
		s.Wait()
	}
	st := rxEP.Stats()
	fmt.Println("stream intact:", bytes.Equal(got, data))
	fmt.Println("fewer packets into netstack than arrived:", st.PacketsOut < st.PacketsIn)
	// Output:
	// stream intact: true
	// fewer packets into netstack than arrived: true
}

// forward moves one packet from a sender's channel endpoint to a
// receiver's, as a wire or a TUN device would, and releases it.
func forward(to *channel.Endpoint, pkt *stack.PacketBuffer) {
	in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(pkt.ToView())})
	proto := pkt.NetworkProtocolNumber
	pkt.DecRef()
	to.InjectInbound(proto, in)
	in.DecRef()
}

// newStack returns a netstack with IPv4 and TCP, one NIC on ep owning
// addr, and every destination routed out of it.
func newStack(ep stack.LinkEndpoint, addr tcpip.Address) *stack.Stack {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	if err := s.CreateNIC(1, ep); err != nil {
		panic(err)
	}
	pa := tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}
	if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
		panic(err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
	return s
}
