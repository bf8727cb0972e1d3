package fdbased

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/linkgate"
)

// ethFrame returns an Ethernet frame of n bytes to dst, of type typ, whose
// network header starts with first.
func ethFrame(n int, dst tcpip.LinkAddress, typ tcpip.NetworkProtocolNumber, first byte) []byte {
	b := make([]byte, max(n, header.EthernetMinimumSize+1))
	header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: peerMAC, DstAddr: dst, Type: typ})
	b[header.EthernetMinimumSize] = first
	return b[:n]
}

// ipFrame returns a bare IP packet of n bytes whose first byte is first.
func ipFrame(n int, first byte) []byte {
	b := make([]byte, max(n, 1))
	b[0] = first
	return b[:n]
}

func TestParseFrame(t *testing.T) {
	const mtu = 1500
	eth := header.EthernetMinimumSize
	tests := []struct {
		name      string
		frame     []byte
		hdr       int
		truncated bool
		proto     tcpip.NetworkProtocolNumber
		why       dropReason
	}{
		{"IPv4", ipFrame(20, 0x45), 0, false, header.IPv4ProtocolNumber, keep},
		{"IPv6", ipFrame(40, 0x60), 0, false, header.IPv6ProtocolNumber, keep},
		{"MTU exactly", ipFrame(mtu, 0x45), 0, false, header.IPv4ProtocolNumber, keep},
		{"one past the MTU", ipFrame(mtu+1, 0x45), 0, false, 0, dropOversized},
		{"truncated by the kernel", ipFrame(100, 0x45), 0, true, 0, dropOversized},
		{"empty", nil, 0, false, 0, dropRunt},
		{"one short of an IPv4 header", ipFrame(19, 0x45), 0, false, 0, dropRunt},
		{"IP version 5", ipFrame(60, 0x55), 0, false, 0, dropNotIP},
		{"Ethernet to us", ethFrame(eth+20, ourMAC, header.IPv4ProtocolNumber, 0x45), eth, false, header.IPv4ProtocolNumber, keep},
		{"Ethernet ARP", ethFrame(eth+28, ourMAC, header.ARPProtocolNumber, 0), eth, false, header.ARPProtocolNumber, keep},
		{"Ethernet broadcast", ethFrame(60, header.EthernetBroadcastAddress, header.IPv4ProtocolNumber, 0x45), eth, false, header.IPv4ProtocolNumber, keep},
		{"Ethernet multicast", ethFrame(60, "\x01\x00\x5e\x01\x02\x03", header.IPv4ProtocolNumber, 0x45), eth, false, header.IPv4ProtocolNumber, keep},
		{"Ethernet to another host", ethFrame(60, otherMAC, header.IPv4ProtocolNumber, 0x45), eth, false, 0, dropNotForUs},
		{"Ethernet, IP version not checked", ethFrame(60, ourMAC, header.IPv4ProtocolNumber, 0x55), eth, false, header.IPv4ProtocolNumber, keep},
		{"Ethernet header only", ethFrame(eth, ourMAC, header.IPv4ProtocolNumber, 0), eth, false, 0, dropRunt},
		{"Ethernet runt", ethFrame(eth+19, ourMAC, header.IPv4ProtocolNumber, 0x45), eth, false, 0, dropRunt},
		{"Ethernet half a header", ethFrame(7, ourMAC, header.IPv4ProtocolNumber, 0), eth, false, 0, dropRunt},
		{"Ethernet MTU exactly", ethFrame(eth+mtu, ourMAC, header.IPv4ProtocolNumber, 0x45), eth, false, header.IPv4ProtocolNumber, keep},
		{"Ethernet one past the MTU", ethFrame(eth+mtu+1, ourMAC, header.IPv4ProtocolNumber, 0x45), eth, false, 0, dropOversized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			proto, why := parseFrame(tc.frame, tc.hdr, tc.hdr+mtu, tc.truncated, ourMAC)
			assert.Equal(t, tc.why, why)
			assert.Equal(t, tc.proto, proto)
		})
	}
}

// deliverOne runs one frame through a batch as a dispatch loop
// would after a read of data into a view sized for mtu, and returns the
// endpoint's counters and what the dispatcher got.
func deliverOne(t testing.TB, data []byte, eth, frag bool, mtu int) (Stats, []event) {
	e := &Endpoint{mtu: uint32(mtu), addr: ourMAC, gate: linkgate.New(linkgate.Hooks{})}
	if eth {
		e.hdrSize = header.EthernetMinimumSize
	}
	r := newRecorder()
	if frag {
		e.gate.Attach(fragDispatcher{r})
	} else {
		e.gate.Attach(plainDispatcher{r})
	}
	var b batch
	b.start(e, 0, false)
	v := buffer.NewViewSize(e.bufSize())
	n := copy(v.AsSlice(), data) // as read or recvmmsg would
	if !b.deliver(v, n, len(data) > n) {
		v.Release()
	}
	b.end()
	return e.Stats(), r.frames()
}

// FuzzFrame feeds arbitrary frames to the receive path: parsing the link
// header, dropping runts, oversized and truncated frames, and delivering
// the rest on either path. It must never panic, must count every frame
// exactly once, and must deliver exactly the bytes that were read.
func FuzzFrame(f *testing.F) {
	eth := header.EthernetMinimumSize
	f.Add(ipFrame(60, 0x45), false, false, uint16(1500))
	f.Add(ipFrame(60, 0x60), false, true, uint16(1500))
	f.Add(ipFrame(1501, 0x45), false, true, uint16(1500))
	f.Add(ipFrame(19, 0x45), false, false, uint16(1500))
	f.Add([]byte{}, true, true, uint16(1500))
	f.Add(ethFrame(eth+40, ourMAC, header.IPv4ProtocolNumber, 0x45), true, true, uint16(1500))
	f.Add(ethFrame(eth+40, otherMAC, header.IPv4ProtocolNumber, 0x45), true, false, uint16(1500))
	f.Add(ethFrame(eth+101, header.EthernetBroadcastAddress, header.ARPProtocolNumber, 0), true, true, uint16(100))
	f.Add(ethFrame(10, ourMAC, header.IPv4ProtocolNumber, 0x45), true, false, uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, eth, frag bool, mtu16 uint16) {
		mtu := int(mtu16%9000) + 1 // views stay within the pool's sizes
		hdr := 0
		if eth {
			hdr = header.EthernetMinimumSize
		}
		s, got := deliverOne(t, data, eth, frag, mtu)
		require.Equal(t, uint64(1), s.Frames)
		require.Equal(t, uint64(min(len(data), hdr+mtu+1)), s.Bytes)
		require.Equal(t, uint64(len(got)), s.Delivered(), "delivered or dropped, once")
		switch {
		case len(data) > hdr+mtu:
			require.Equal(t, uint64(1), s.DroppedOversized)
		case len(data) < hdr+header.IPv4MinimumSize:
			require.Equal(t, uint64(1), s.DroppedRunt)
		case len(got) == 1:
			require.Equal(t, string(data[:hdr]), string(got[0].link))
			require.Equal(t, data[hdr:], got[0].data)
			require.Equal(t, 1, got[0].views)
			require.Equal(t, frag, got[0].fragments)
		default:
			require.Equal(t, uint64(1), s.DroppedNotForUs+s.DroppedNotIP)
		}
	})
}
