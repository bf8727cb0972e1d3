package lro

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// udp4 builds an IPv4 UDP packet with a valid checksum (or none).
func udp4(payload []byte, noChecksum bool) []byte {
	b := make([]byte, header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.UDPProtocolNumber),
		SrcAddr: testpacket.Src4, DstAddr: testpacket.Dst4})
	ip.SetChecksum(^ip.CalculateChecksum())
	setUDP(b[header.IPv4MinimumSize:], payload, testpacket.Src4, testpacket.Dst4, noChecksum)
	return b
}

func setUDP(b, payload []byte, src, dst tcpip.Address, noChecksum bool) {
	u := header.UDP(b)
	u.Encode(&header.UDPFields{SrcPort: 53, DstPort: 5353, Length: uint16(len(b))})
	copy(b[header.UDPMinimumSize:], payload)
	if noChecksum {
		return
	}
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(b)))
	u.SetChecksum(^checksum.Checksum(b, xsum))
}

// icmp4 builds an IPv4 ICMP echo, whose checksum netstack always checks.
func icmp4() []byte {
	b := make([]byte, header.IPv4MinimumSize+header.ICMPv4MinimumSize)
	ip := header.IPv4(b)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: uint8(header.ICMPv4ProtocolNumber),
		SrcAddr: testpacket.Src4, DstAddr: testpacket.Dst4})
	ip.SetChecksum(^ip.CalculateChecksum())
	b[header.IPv4MinimumSize] = byte(header.ICMPv4Echo)
	return b
}

// v6WithExtension puts an extension header of kind nh (hop-by-hop 0, or
// fragment 44) between the IPv6 header and a TCP or UDP packet built from
// inner (an IPv6 packet whose transport it keeps).
func v6WithExtension(inner []byte, nh uint8) []byte {
	ext := make([]byte, 8)
	ext[0] = inner[6] // next header: the transport
	b := append(append(append([]byte{}, inner[:header.IPv6MinimumSize]...), ext...), inner[header.IPv6MinimumSize:]...)
	ip := header.IPv6(b)
	ip.SetPayloadLength(ip.PayloadLength() + 8)
	ip.SetNextHeader(nh)
	return b
}

func udp6(payload []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.UDPMinimumSize+len(payload))
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(b) - header.IPv6MinimumSize),
		TransportProtocol: header.UDPProtocolNumber, HopLimit: 64, SrcAddr: testpacket.Src6, DstAddr: testpacket.Dst6})
	setUDP(b[header.IPv6MinimumSize:], payload, testpacket.Src6, testpacket.Dst6, false)
	return b
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x10
	return c
}

// TestClaimChecksumOffload: in the offload mode netstack checks nothing,
// so the engine hands up only what it verified, and drops and counts the
// rest.
func TestClaimChecksumOffload(t *testing.T) {
	data4 := testpacket.TCP{Payload: []byte("some data")}.Bytes()
	data6 := testpacket.TCP{V6: true, Payload: []byte("some data")}.Bytes()
	ack4 := testpacket.TCP{}.Bytes()
	frag4 := testpacket.TCP{Payload: []byte("frag"), MoreFragments: true}.Bytes()
	icmpFrag := icmp4()
	header.IPv4(icmpFrag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	header.IPv4(icmpFrag).SetChecksum(0)
	header.IPv4(icmpFrag).SetChecksum(^header.IPv4(icmpFrag).CalculateChecksum())
	tests := []struct {
		name string
		pkt  []byte
		drop counter // 0: delivered
	}{
		{"good TCP data", data4, 0},
		{"good TCP data v6", data6, 0},
		{"bad TCP data", flip(data4, len(data4)-1), cDropBadChecksum},
		{"bad TCP data v6", flip(data6, len(data6)-1), cDropBadChecksum},
		{"bad pure ACK", flip(ack4, len(ack4)-1), cDropBadChecksum},
		{"bad IPv4 header", flip(data4, 8), cDropBadChecksum},
		{"good UDP", udp4([]byte("dns?"), false), 0},
		{"UDP without checksum", udp4([]byte("dns?"), true), 0},
		{"bad UDP", flip(udp4([]byte("dns?"), false), 30), cDropBadChecksum},
		{"good UDP v6", udp6([]byte("x")), 0},
		{"bad UDP v6", flip(udp6([]byte("x")), 48), cDropBadChecksum},
		{"ICMP", icmp4(), 0},
		{"ICMP with bad IPv4 header", flip(icmp4(), 8), cDropBadChecksum},
		{"TCP fragment", frag4, cDropUnverifiable},
		{"ICMP fragment", icmpFrag, 0},
		{"truncated", data4[:header.IPv4MinimumSize+10], cDropUnverifiable},
		{"v6 hop-by-hop TCP", v6WithExtension(data6, 0), 0},
		{"v6 hop-by-hop bad TCP", flip(v6WithExtension(data6, 0), len(data6)+7), cDropBadChecksum},
		{"v6 fragment of TCP", v6WithExtension(data6, 44), cDropUnverifiable},
		{"not IP", []byte{1, 2, 3}, 0},
	}
	for _, tt := range tests {
		for _, p := range paths {
			t.Run(tt.name+"/"+p.String(), func(t *testing.T) {
				rec := &recorder{}
				e := newEngine(t, rec, Config{ClaimChecksumOffload: true})
				proto := testpacket.Proto(tt.pkt)
				if tt.name == "not IP" {
					proto = header.ARPProtocolNumber
				}
				feedProto(e, p, proto, tt.pkt)
				e.Flush()
				out := rec.take()
				var c counters
				var want Stats
				if tt.drop != 0 {
					assert.Empty(t, out)
					c.inc(tt.drop)
					c.addTo(&want)
					got := e.Stats()
					assert.Equal(t, want.DropBadChecksum, got.DropBadChecksum)
					assert.Equal(t, want.DropUnverifiable, got.DropUnverifiable)
					return
				}
				require.Equal(t, 1, len(out))
				assert.Equal(t, tt.pkt, out[0].data)
				assert.Zero(t, e.Stats().Dropped())
			})
		}
	}
}

// TestDefaultModeDropsNothing: without the claim, bad packets go to
// netstack unchanged, which drops them itself.
func TestDefaultModeDropsNothing(t *testing.T) {
	for _, b := range [][]byte{
		flip(testpacket.TCP{Payload: []byte("x")}.Bytes(), 40),
		flip(udp4([]byte("dns?"), false), 30),
		testpacket.TCP{Payload: []byte("frag"), MoreFragments: true}.Bytes(),
	} {
		rec := &recorder{}
		e := newEngine(t, rec, Config{})
		feed(e, viaPacket, b)
		out := rec.take()
		require.Equal(t, 1, len(out))
		assert.Equal(t, b, out[0].data)
		assert.Zero(t, e.Stats().Dropped())
	}
}
