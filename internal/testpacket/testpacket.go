// Package testpacket builds and checks IPv4/IPv6 TCP packets for netlro's
// tests, with gVisor's header package.
package testpacket

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Default addresses of built packets. They never leave the process.
var (
	Src4 = tcpip.AddrFrom4([4]byte{192, 0, 2, 1})
	Dst4 = tcpip.AddrFrom4([4]byte{192, 0, 2, 2})
	Src6 = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 1})
	Dst6 = tcpip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: 2})
)

// TCP describes one TCP segment. The zero value, after Defaults, is an
// IPv4 segment 192.0.2.1:1000 -> 192.0.2.2:2000 with ACK set.
type TCP struct {
	V6               bool
	Src, Dst         tcpip.Address // zero means Src4/Dst4 or Src6/Dst6
	SrcPort, DstPort uint16        // zero means 1000 and 2000
	Seq, Ack         uint32
	Flags            header.TCPFlags // zero means ACK
	Window           uint16          // zero means 65535
	TS               bool            // carry NOP,NOP,timestamp
	TSVal, TSEcr     uint32
	Options          []byte // raw TCP options, used instead of TS when set
	Payload          []byte
	TOS              uint8 // IPv4 TOS or IPv6 traffic class
	TTL              uint8 // zero means 64
	ID               uint16
	FragOffset       uint16 // IPv4 fragment offset in bytes
	MoreFragments    bool
	IPOptions        []byte // IPv4 options (a multiple of 4 bytes)
	Padding          int    // bytes appended past the IP length
	FlowLabel        uint32
	DontFragment     bool      // IPv4 DF
	Urgent           uint16    // TCP urgent pointer
	IPv6Ext          []IPv6Ext // IPv6 extension headers, in order, before TCP
}

// IPv6Ext is one IPv6 extension header (RFC 8200 4): its type (the next
// header value that names it) and the bytes after its next-header and
// length fields. Bytes builds the two fields and pads Body with zeros
// (Pad1 options) to a multiple of 8 bytes in all.
type IPv6Ext struct {
	Type uint8
	Body []byte
}

// IPv6 extension header types (RFC 8200 4.1).
const (
	IPv6HopByHop    = 0
	IPv6Routing     = 43
	IPv6Fragment    = 44
	IPv6DestOptions = 60
)

// bytes returns the header with next as its next header.
func (x IPv6Ext) bytes(next uint8) []byte {
	n := (len(x.Body) + 2 + 7) &^ 7
	if x.Type == IPv6Fragment {
		n = 8 // its second byte is reserved, not a length
	}
	b := make([]byte, n)
	b[0] = next
	if x.Type != IPv6Fragment {
		b[1] = uint8(n/8 - 1)
	}
	copy(b[2:], x.Body)
	return b
}

func (t *TCP) defaults() {
	if t.Src.Len() == 0 {
		t.Src, t.Dst = Src4, Dst4
		if t.V6 {
			t.Src, t.Dst = Src6, Dst6
		}
	}
	if t.SrcPort == 0 {
		t.SrcPort = 1000
	}
	if t.DstPort == 0 {
		t.DstPort = 2000
	}
	if t.Flags == 0 {
		t.Flags = header.TCPFlagAck
	}
	if t.Window == 0 {
		t.Window = 65535
	}
	if t.TTL == 0 {
		t.TTL = 64
	}
}

// Proto returns the network protocol number of t.
func (t TCP) Proto() tcpip.NetworkProtocolNumber {
	if t.V6 {
		return header.IPv6ProtocolNumber
	}
	return header.IPv4ProtocolNumber
}

// Bytes returns the packet, starting at the IP header, with valid checksums.
func (t TCP) Bytes() []byte {
	t.defaults()
	opts := t.Options
	if opts == nil && t.TS {
		opts = make([]byte, 12)
		opts[0], opts[1], opts[2], opts[3] = header.TCPOptionNOP, header.TCPOptionNOP, header.TCPOptionTS, header.TCPOptionTSLength
		binary.BigEndian.PutUint32(opts[4:], t.TSVal)
		binary.BigEndian.PutUint32(opts[8:], t.TSEcr)
	}
	tcpLen := header.TCPMinimumSize + len(opts)
	ipLen := header.IPv4MinimumSize + len(t.IPOptions)
	var ext []byte
	firstNext := uint8(header.TCPProtocolNumber)
	if t.V6 {
		next := uint8(header.TCPProtocolNumber)
		for i := len(t.IPv6Ext) - 1; i >= 0; i-- {
			ext = append(t.IPv6Ext[i].bytes(next), ext...)
			next = t.IPv6Ext[i].Type
		}
		firstNext = next
		ipLen = header.IPv6MinimumSize + len(ext)
	}
	total := ipLen + tcpLen + len(t.Payload)
	b := make([]byte, total+t.Padding)
	for i := total; i < len(b); i++ {
		b[i] = 0xa5
	}
	if t.V6 {
		header.IPv6(b).Encode(&header.IPv6Fields{
			TrafficClass:      t.TOS,
			FlowLabel:         t.FlowLabel,
			PayloadLength:     uint16(len(ext) + tcpLen + len(t.Payload)),
			TransportProtocol: tcpip.TransportProtocolNumber(firstNext),
			HopLimit:          t.TTL,
			SrcAddr:           t.Src,
			DstAddr:           t.Dst,
		})
		copy(b[header.IPv6MinimumSize:], ext)
	} else {
		var flags uint8
		if t.MoreFragments {
			flags = header.IPv4FlagMoreFragments
		}
		if t.DontFragment {
			flags |= header.IPv4FlagDontFragment
		}
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{
			TOS:            t.TOS,
			TotalLength:    uint16(total),
			ID:             t.ID,
			Flags:          flags,
			FragmentOffset: t.FragOffset,
			TTL:            t.TTL,
			Protocol:       uint8(header.TCPProtocolNumber),
			SrcAddr:        t.Src,
			DstAddr:        t.Dst,
		})
		// Encode writes no raw options: set the header length and copy them.
		ip[0] = 0x40 | uint8(ipLen/4)
		copy(ip[header.IPv4MinimumSize:ipLen], t.IPOptions)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(b[ipLen:])
	tcp.Encode(&header.TCPFields{
		SrcPort:       t.SrcPort,
		DstPort:       t.DstPort,
		SeqNum:        t.Seq,
		AckNum:        t.Ack,
		DataOffset:    uint8(tcpLen),
		Flags:         t.Flags,
		WindowSize:    t.Window,
		UrgentPointer: t.Urgent,
	})
	copy(tcp[header.TCPMinimumSize:], opts)
	copy(b[ipLen+tcpLen:], t.Payload)
	SetTCPChecksum(b[:total], t.V6)
	return b
}

// SetTCPChecksum recomputes the TCP checksum of pkt (IP header first, no
// padding) and, for IPv4, the header checksum.
func SetTCPChecksum(pkt []byte, v6 bool) {
	src, dst, ipLen := addrs(pkt, v6)
	if !v6 {
		ip := header.IPv4(pkt)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
}

func addrs(pkt []byte, v6 bool) (src, dst tcpip.Address, ipLen int) {
	if v6 {
		ip := header.IPv6(pkt)
		n, _, _ := IPv6HeaderLen(pkt)
		return ip.SourceAddress(), ip.DestinationAddress(), n
	}
	ip := header.IPv4(pkt)
	return ip.SourceAddress(), ip.DestinationAddress(), int(ip.HeaderLength())
}

// IPv6HeaderLen walks the Hop-by-Hop, Routing and Destination Options
// headers of the IPv6 packet pkt and returns the length of the IPv6
// header with them, the protocol that follows, and false if pkt ends
// inside them.
func IPv6HeaderLen(pkt []byte) (int, uint8, bool) {
	n := header.IPv6MinimumSize
	if len(pkt) < n {
		return n, 0, false
	}
	next := pkt[6]
	for {
		switch next {
		case IPv6HopByHop, IPv6Routing, IPv6DestOptions:
		default:
			return n, next, true
		}
		if len(pkt) < n+2 {
			return n, next, false
		}
		next, n = pkt[n], n+(int(pkt[n+1])+1)*8
		if len(pkt) < n {
			return n, next, false
		}
	}
}

// IPHeaderLen returns the length of the IP header of pkt, with IPv4
// options or IPv6 extension headers.
func IPHeaderLen(pkt []byte) int {
	_, _, n := addrs(pkt, len(pkt) > 0 && pkt[0]>>4 == 6)
	return n
}

// Check verifies an IPv4 or IPv6 TCP packet: lengths, the IPv4 header
// checksum and the TCP checksum. It returns the TCP header and payload.
func Check(pkt []byte) (header.TCP, []byte, error) {
	if len(pkt) == 0 {
		return nil, nil, fmt.Errorf("empty packet")
	}
	v6 := pkt[0]>>4 == 6
	var ipLen, total int
	if v6 {
		ip := header.IPv6(pkt)
		if !ip.IsValid(len(pkt)) {
			return nil, nil, fmt.Errorf("invalid IPv6 header")
		}
		n, next, ok := IPv6HeaderLen(pkt)
		if !ok {
			return nil, nil, fmt.Errorf("truncated IPv6 extension headers")
		}
		if tcpip.TransportProtocolNumber(next) != header.TCPProtocolNumber {
			return nil, nil, fmt.Errorf("not TCP")
		}
		ipLen, total = n, header.IPv6MinimumSize+int(ip.PayloadLength())
	} else {
		ip := header.IPv4(pkt)
		if !ip.IsValid(len(pkt)) {
			return nil, nil, fmt.Errorf("invalid IPv4 header")
		}
		if !ip.IsChecksumValid() {
			return nil, nil, fmt.Errorf("bad IPv4 header checksum")
		}
		ipLen, total = int(ip.HeaderLength()), int(ip.TotalLength())
	}
	if total != len(pkt) {
		return nil, nil, fmt.Errorf("IP length %d, packet %d bytes", total, len(pkt))
	}
	src, dst, _ := addrs(pkt, v6)
	tcp := header.TCP(pkt[ipLen:])
	if len(tcp) < header.TCPMinimumSize || int(tcp.DataOffset()) < header.TCPMinimumSize || int(tcp.DataOffset()) > len(tcp) {
		return nil, nil, fmt.Errorf("bad TCP header")
	}
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	if checksum.Checksum(tcp, xsum) != 0xffff {
		return nil, nil, fmt.Errorf("bad TCP checksum")
	}
	return tcp, tcp[tcp.DataOffset():], nil
}

// Payload returns n bytes drawn from a generator seeded with seed.
func Payload(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Segments cuts payload into segments of at most mss bytes, each built
// from tmpl with consecutive sequence numbers starting at tmpl.Seq.
func Segments(tmpl TCP, payload []byte, mss int) [][]byte {
	var out [][]byte
	seq := tmpl.Seq
	for len(payload) > 0 {
		n := min(mss, len(payload))
		s := tmpl
		s.Seq = seq
		s.Payload = payload[:n]
		out = append(out, s.Bytes())
		seq += uint32(n)
		payload = payload[n:]
	}
	return out
}

// NewPacket returns a PacketBuffer holding a copy of b, as a link endpoint
// would deliver it. The caller owns the reference.
func NewPacket(b []byte) *stack.PacketBuffer {
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
}

// Bytes returns the whole data of pkt (from its network header on).
func Bytes(pkt *stack.PacketBuffer) []byte {
	var out []byte
	for _, s := range pkt.AsSlices() {
		out = append(out, s...)
	}
	return out[pkt.HeaderSize():]
}

// Proto returns the network protocol of a raw IP packet.
func Proto(b []byte) tcpip.NetworkProtocolNumber {
	if len(b) > 0 && b[0]>>4 == 6 {
		return header.IPv6ProtocolNumber
	}
	return header.IPv4ProtocolNumber
}
