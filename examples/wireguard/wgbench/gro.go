package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// groDevice is a tun.Device that feeds gVisor's GRO (stack/gro) with every
// packet of a Write batch and flushes it at the end of Write, as
// Tailscale's netstack does (wgengine/netstack/gro). Like Tailscale it
// verifies each packet's IPv4 header and TCP or UDP checksum before GRO and
// reports receive checksum offload: the GRO at the pinned gVisor leaves
// merged packets' IPv4 and TCP checksums stale, so netstack would drop them
// otherwise. Tailscale takes a GRO from a sync.Pool per batch; this device
// keeps one, so what a Flush leaves held comes out at the next Write. Outbound packets go through a channel.Endpoint, one per Read,
// as in wireguard-go's tun/netstack.
//
// With GRO disabled it is wireguard-go's tun/netstack with its leak fixed:
// a PacketBuffer per packet, delivered at once and released, checksums
// verified by netstack.
type groDevice struct {
	ep     *groLink
	events chan tun.Event
	mtu    int

	mu sync.Mutex // GRO is not safe for concurrent use
	// +checklocks:mu
	gro gro.GRO
	// TCP payload bytes enqueued and delivered, to see whether Flush
	// left packets held (the defect of its Flush at the pinned gVisor).
	// +checklocks:mu
	in uint64
	// +checklocks:mu
	out uint64
}

// Held returns the TCP payload bytes GRO still held after the last Write.
func (d *groDevice) Held() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.in - d.out
}

// countingDispatcher counts the TCP payload bytes GRO delivers.
type countingDispatcher struct {
	stack.NetworkDispatcher
	dev *groDevice
}

// DeliverNetworkPacket is called by GRO, inside Write, with c.dev.mu held.
//
// +checklocksignore
func (c countingDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	if h, ok := pkt.Data().PullUp(min(pkt.Data().Size(), 80)); ok {
		c.dev.out += uint64(tcpPayload(h))
	}
	c.NetworkDispatcher.DeliverNetworkPacket(proto, pkt)
}

// tcpPayload returns the TCP payload length that the IP and TCP headers at
// the start of p state, or 0.
func tcpPayload(p []byte) int {
	switch header.IPVersion(p) {
	case header.IPv4Version:
		ip := header.IPv4(p)
		if len(p) < header.IPv4MinimumSize || ip.TransportProtocol() != header.TCPProtocolNumber || len(p) < int(ip.HeaderLength())+header.TCPMinimumSize {
			return 0
		}
		return int(ip.TotalLength()) - int(ip.HeaderLength()) - int(header.TCP(p[ip.HeaderLength():]).DataOffset())
	case header.IPv6Version:
		ip := header.IPv6(p)
		if len(p) < header.IPv6MinimumSize+header.TCPMinimumSize || ip.TransportProtocol() != header.TCPProtocolNumber {
			return 0
		}
		return int(ip.PayloadLength()) - int(header.TCP(p[header.IPv6MinimumSize:]).DataOffset())
	}
	return 0
}

// groLink is a channel.Endpoint that claims receive checksum offload and
// hands what is attached to it to the device's GRO.
type groLink struct {
	*channel.Endpoint
	dev   *groDevice
	trust bool
	d     atomic.Pointer[stack.NetworkDispatcher]
}

func (l *groLink) Capabilities() stack.LinkEndpointCapabilities {
	if l.trust {
		return stack.CapabilityRXChecksumOffload
	}
	return 0
}

func (l *groLink) Attach(d stack.NetworkDispatcher) {
	if d == nil {
		l.d.Store(nil)
	} else {
		l.d.Store(&d)
	}
	l.Endpoint.Attach(d)
}

// +checklocksignore: d is not shared yet.
func newGRODevice(s *stack.Stack, id tcpip.NICID, mtu int, enabled bool) (*groDevice, error) {
	d := &groDevice{events: make(chan tun.Event, 1), mtu: mtu}
	d.ep = &groLink{Endpoint: channel.New(1024, uint32(mtu), ""), dev: d, trust: enabled}
	if err := s.CreateNIC(id, d.ep); err != nil {
		return nil, fmt.Errorf("create NIC: %s", err)
	}
	d.gro.Init(enabled)
	d.events <- tun.EventUp
	return d, nil
}

// Write feeds each packet to GRO and flushes it, as Tailscale's
// wgengine/netstack does per batch.
func (d *groDevice) Write(bufs [][]byte, offset int) (int, error) {
	dp := d.ep.d.Load()
	if dp == nil {
		return 0, os.ErrClosed
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gro.Dispatcher = countingDispatcher{NetworkDispatcher: *dp, dev: d}
	for _, b := range bufs {
		p := b[offset:]
		var proto tcpip.NetworkProtocolNumber
		switch header.IPVersion(p) {
		case header.IPv4Version:
			proto = header.IPv4ProtocolNumber
		case header.IPv6Version:
			proto = header.IPv6ProtocolNumber
		default:
			continue
		}
		if d.ep.trust && !checksumsValid(p) {
			continue // as Tailscale's RXChecksumOffload drops it
		}
		d.in += uint64(tcpPayload(p))
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
		pkt.NetworkProtocolNumber = proto
		pkt.RXChecksumValidated = d.ep.trust
		d.gro.Enqueue(pkt)
		pkt.DecRef()
	}
	d.gro.Flush()
	return len(bufs), nil
}

func (d *groDevice) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	pkt := d.ep.ReadContext(context.Background()) // nil once the endpoint is closed
	if pkt == nil {
		return 0, os.ErrClosed
	}
	n := 0
	for _, s := range pkt.AsSlices() {
		n += copy(bufs[0][offset+n:], s)
	}
	pkt.DecRef()
	sizes[0] = n
	return 1, nil
}

func (d *groDevice) File() *os.File           { return nil }
func (d *groDevice) MTU() (int, error)        { return d.mtu, nil }
func (d *groDevice) Name() (string, error)    { return "gro", nil }
func (d *groDevice) Events() <-chan tun.Event { return d.events }
func (d *groDevice) BatchSize() int           { return 1 }

func (d *groDevice) Close() error {
	d.ep.Close()
	close(d.events)
	return nil
}

// checksumsValid checks what netstack would have checked without the
// offload claim: the IPv4 header checksum, and the TCP or UDP checksum of
// a packet that is not a fragment.
func checksumsValid(p []byte) bool {
	var l4 []byte
	var xsum uint16
	var proto tcpip.TransportProtocolNumber
	switch header.IPVersion(p) {
	case header.IPv4Version:
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || ip.CalculateChecksum() != 0xffff {
			return false
		}
		if ip.More() || ip.FragmentOffset() != 0 {
			return true
		}
		proto, l4 = ip.TransportProtocol(), ip.Payload()
		xsum = header.PseudoHeaderChecksum(proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	case header.IPv6Version:
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) {
			return false
		}
		proto, l4 = ip.TransportProtocol(), ip.Payload()
		xsum = header.PseudoHeaderChecksum(proto, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	default:
		return false
	}
	if proto != header.TCPProtocolNumber && proto != header.UDPProtocolNumber {
		return true // netstack checks the rest (ICMP) itself
	}
	return checksum.Checksum(l4, xsum) == 0xffff
}
