package iperf

import (
	"fmt"
	"io"
	"sync"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/sniffer"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Addresses of the two ends of a run. They are documentation prefixes
// (RFC 5737, RFC 3849) and exist only inside the two netstacks, or inside a
// network namespace the caller created.
var (
	SenderAddr4   = tcpip.AddrFrom4([4]byte{192, 0, 2, 1})
	ReceiverAddr4 = tcpip.AddrFrom4([4]byte{192, 0, 2, 2})
	SenderAddr6   = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
	ReceiverAddr6 = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
)

// Port is the TCP port the receiver listens on, iperf3's.
const Port = 5201

// nicID is the one NIC of every stack built here.
const nicID tcpip.NICID = 1

// NewStack returns a netstack with IPv4, IPv6, ARP and TCP (SACK on,
// receive buffer auto-tuning on) and one NIC on ep that owns addrs. Every
// destination is routed out of that NIC. The caller destroys the stack
// with DestroyStack, which also closes ep.
func NewStack(ep stack.LinkEndpoint, addrs ...tcpip.Address) (*stack.Stack, error) {
	return newStack(ep, stack.NICOptions{}, addrs...)
}

// newStack is NewStack with NIC options.
func newStack(ep stack.LinkEndpoint, nicOpts stack.NICOptions, addrs ...tcpip.Address) (*stack.Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(false)
	rbuf := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 4 << 20, Max: 8 << 20}
	sbuf := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 4 << 20, Max: 8 << 20}
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &rbuf, &sbuf} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			s.Destroy()
			return nil, fmt.Errorf("iperf: set TCP option %T: %s", opt, err)
		}
	}
	if err := s.CreateNICWithOptions(nicID, ep, nicOpts); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("iperf: create NIC: %s", err)
	}
	for _, addr := range addrs {
		proto := header.IPv4ProtocolNumber
		if addr.Len() == header.IPv6AddressSize {
			proto = header.IPv6ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: addr.WithPrefix()}
		if err := s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
			s.Destroy()
			return nil, fmt.Errorf("iperf: add address %s: %s", addr, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return s, nil
}

// proto returns the network protocol of addr.
func proto(addr tcpip.Address) tcpip.NetworkProtocolNumber {
	if addr.Len() == header.IPv6AddressSize {
		return header.IPv6ProtocolNumber
	}
	return header.IPv4ProtocolNumber
}

// DestroyStack detaches ep, the link endpoint of s's NIC, and then destroys
// s: the order gVisor's fdbased needs. Stack.Destroy removes the NIC while
// holding the stack's lock and calls ep.Attach(nil), which in gVisor's
// fdbased waits for a packet being delivered, and delivering a packet can
// take that lock (a reset's route lookup), so a packet in flight at that
// moment would deadlock both. Detaching first, without the lock, lets it
// finish. This project's endpoints need no such care.
func DestroyStack(s *stack.Stack, ep stack.LinkEndpoint) {
	ep.Attach(nil)
	s.Destroy()
}

// ReceiverStack is a receiving netstack on the link endpoint of a Mode.
type ReceiverStack struct {
	// Stack is the netstack; Destroy destroys it.
	Stack *stack.Stack
	// Link is its link endpoint, with the counters of its parts.
	Link *Link

	nicEP stack.LinkEndpoint // what the NIC was created on
}

// NewReceiverStack builds mode's link endpoint on link.FD and a netstack
// on it owning addrs. A non-nil pcap receives a capture of every packet
// the netstack receives, taken between the NIC and the endpoint, so that
// merged packets are what it shows.
func NewReceiverStack(mode Mode, link LinkOptions, pcap io.Writer, addrs ...tcpip.Address) (*ReceiverStack, error) {
	l, err := NewLink(mode, link)
	if err != nil {
		return nil, err
	}
	ep := l.Endpoint
	if pcap != nil {
		// The sniffer also logs every packet unless told not to, with a
		// process-wide switch; a capture file is all that was asked for.
		sniffer.LogPackets.Store(0)
		snif, err := sniffer.NewWithWriter(ep, &lockedWriter{w: pcap}, 1<<16)
		if err != nil {
			ep.Close()
			return nil, fmt.Errorf("iperf: pcap: %w", err)
		}
		ep = snif
	}
	s, err := NewStack(ep, addrs...)
	if err != nil {
		return nil, err
	}
	return &ReceiverStack{Stack: s, Link: l, nicEP: ep}, nil
}

// Destroy destroys the netstack and its link endpoint, as users do
// (Stack.Destroy), or for gVisor's fdbased with DestroyStack. The caller
// closes the fd after.
func (r *ReceiverStack) Destroy() {
	if r.Link.lro == nil && r.Link.fd == nil {
		DestroyStack(r.Stack, r.nicEP)
		return
	}
	r.Stack.Destroy()
}

// lockedWriter serializes writes: gVisor's sniffer writes one record per
// Write call without a lock, and deliveries come from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	// +checklocks:mu
	w io.Writer
}

// Write writes b to the underlying writer under the lock.
func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
