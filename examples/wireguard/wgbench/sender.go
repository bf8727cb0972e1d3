package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"

	"github.com/netlro/netlro/examples/wireguard/lrotun"
)

// The senders, one per group of rows.
const (
	sendNetstack = "netstack" // gVisor's TCP through lrotun: TSO, batches of up to 128 per Read
	sendKernel   = "kernel"   // Linux's TCP through a kernel TUN with TSO (root)
)

// sender is the sending end: a TCP stack, its TUN device and the sending
// wireguard-go.
type sender struct {
	dev   *counted
	bind  *countingBind
	dial  func(ctx context.Context, localPort int, to netip.AddrPort) (net.Conn, error)
	close func()
}

// newNetstackSender is what a userspace client such as Tailscale's netstack
// gives wireguard-go: a TUN device whose BatchSize is above 1 and whose
// Read cuts netstack's TSO packets into a batch of segments.
func newNetstackSender(k key, peerPublic string, peerPort int) (*sender, error) {
	s, err := newStack()
	if err != nil {
		return nil, err
	}
	d, err := lrotun.New(s, 1, lrotun.Options{MTU: tunnelMTU})
	if err != nil {
		s.Destroy()
		return nil, err
	}
	if err := addAddresses(s, senderV4, senderV6); err != nil {
		s.Destroy()
		return nil, err
	}
	dev := &counted{Device: d}
	bind := &countingBind{Bind: conn.NewDefaultBind()}
	wg, _, err := newWG(dev, bind, k.Private, peerPublic, fmt.Sprintf("127.0.0.1:%d", peerPort), []string{receiverV4 + "/32", receiverV6 + "/128"})
	if err != nil {
		s.Destroy()
		return nil, err
	}
	return &sender{
		dev:  dev,
		bind: bind,
		dial: func(ctx context.Context, localPort int, to netip.AddrPort) (net.Conn, error) {
			proto, from := ipv4.ProtocolNumber, netip.MustParseAddr(senderV4)
			if to.Addr().Is6() {
				proto, from = ipv6.ProtocolNumber, netip.MustParseAddr(senderV6)
			}
			local := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(from.AsSlice()), Port: uint16(localPort)}
			remote := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(to.Addr().AsSlice()), Port: to.Port()}
			return gonet.DialTCPWithBind(ctx, s, local, remote, proto)
		},
		close: func() {
			wg.Close()
			s.Destroy()
		},
	}, nil
}
