package lro

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// verdict is what parsing a packet decided, before its flow is looked up.
type verdict uint8

const (
	// verdictCandidate: an IP/TCP data segment that may merge if it is in
	// order for its flow.
	verdictCandidate verdict = iota
	// verdictPassFlow: a valid TCP packet that must not merge; its flow's
	// held packet goes first.
	verdictPassFlow
	// verdictPass: delivered as it is, no flow to flush.
	verdictPass
)

// segment is a parsed IPv4 or IPv6 TCP packet.
type segment struct {
	key     flowKey
	hash    uint64 // valid when hashed; see flowHash
	hashed  bool
	hdr     []byte // IP and TCP headers, contiguous, writable
	v6      bool
	ipLen   int
	tcpLen  int
	payload int // TCP payload bytes
	seq     uint32
	ack     uint32
	window  uint16
	flags   header.TCPFlags
	ts      bool // NOP,NOP,timestamp present
	tsVal   uint32
	tsEcr   uint32
	tos     uint8
	ttl     uint8
	sum     uint16 // ones' complement sum of the payload, once verified
	reason  counter
	// fragment: an IPv4 first fragment; only hdr[:ipLen+4] is there.
	fragment bool
}

// dst returns the segment's destination address.
func (s *segment) dst() tcpip.Address {
	if s.v6 {
		return tcpip.AddrFrom16(s.key.dst)
	}
	return tcpip.AddrFrom4([4]byte(s.key.dst[:4]))
}

// tcp returns the segment's TCP header.
func (s *segment) tcp() header.TCP { return header.TCP(s.hdr[s.ipLen:]) }

// parseSegment parses r as proto and decides what may happen to it. It
// checks one thing at a time, as gVisor's gro.dispatch4 does, and never
// reads a length off the wire before comparing it with what is there.
func parseSegment(r *packetRef, proto tcpip.NetworkProtocolNumber, s *segment) verdict {
	size := r.size
	switch proto {
	case header.IPv4ProtocolNumber:
		return parseIPv4(r, size, s)
	case header.IPv6ProtocolNumber:
		return parseIPv6(r, size, s)
	}
	s.reason = cPassNotTCP
	return verdictPass
}

func parseIPv4(r *packetRef, size int, s *segment) verdict {
	b, ok := r.pullUp(header.IPv4MinimumSize)
	if !ok || !header.IPv4(b).IsValid(size) {
		s.reason = cPassMalformed
		return verdictPass
	}
	ip := header.IPv4(b)
	if ip.TransportProtocol() != header.TCPProtocolNumber {
		s.reason = cPassNotTCP
		return verdictPass
	}
	s.v6 = false
	s.ipLen = int(ip.HeaderLength())
	s.tos, _ = ip.TOS()
	s.ttl = ip.TTL()
	s.key = flowKey{proto: 4}
	copy(s.key.src[:], b[12:16])
	copy(s.key.dst[:], b[16:20])
	// No fragments (inet_lro lro_tcp_ip_check: a fragment never merges).
	if ip.FragmentOffset() != 0 || ip.Flags()&header.IPv4FlagMoreFragments != 0 {
		return parseFragment(r, ip, s)
	}
	return parseTCP(r, int(ip.TotalLength()), size, s)
}

// parseFragment names the flow of a first fragment by its ports, so that
// the flow's held packet goes up before the fragment: the reassembled
// segment must not overtake it. Later fragments name no flow; by the time
// one completes a packet, the first fragment has flushed.
func parseFragment(r *packetRef, ip header.IPv4, s *segment) verdict {
	s.reason = cPassFragment
	total := int(ip.TotalLength())
	if ip.FragmentOffset() != 0 || s.ipLen+4 > total {
		return verdictPass
	}
	b, ok := r.pullUp(s.ipLen + 4)
	if !ok {
		return verdictPass
	}
	s.hdr = b
	s.fragment = true
	s.key.ports = binary.BigEndian.Uint32(b[s.ipLen:])
	s.key.link = r.linkID()
	return verdictPassFlow
}

func parseIPv6(r *packetRef, size int, s *segment) verdict {
	b, ok := r.pullUp(header.IPv6MinimumSize)
	if !ok || !header.IPv6(b).IsValid(size) {
		s.reason = cPassMalformed
		return verdictPass
	}
	ip := header.IPv6(b)
	total := header.IPv6MinimumSize + int(ip.PayloadLength())
	s.v6 = true
	s.ipLen = header.IPv6MinimumSize
	s.tos, _ = ip.TOS()
	s.ttl = ip.HopLimit()
	s.key = flowKey{proto: 6}
	copy(s.key.src[:], b[8:24])
	copy(s.key.dst[:], b[24:40])
	nh := ip.NextHeader()
	if nh != uint8(header.TCPProtocolNumber) {
		var v verdict
		if nh, v = parseIPv6Extensions(r, nh, total, s); v != verdictCandidate {
			return v
		}
	}
	return parseTCP(r, total, size, s)
}

// maxIPv6Extensions bounds the extension headers walked before TCP. A
// packet carries one or two; one with more passes through.
const maxIPv6Extensions = 8

// parseIPv6Extensions walks the Hop-by-Hop, Routing and Destination Options
// headers from the one named nh on, as Linux's ipv6_gro_receive skips them
// (ipv6_gso_pull_exthdrs) and gVisor's dispatch6 does, and sets s.ipLen
// past them. Segments whose headers are byte-identical merge (classify);
// the merged packet carries them once, and netstack processes them once,
// as it processes them for each segment. It returns verdictCandidate when
// TCP follows.
func parseIPv6Extensions(r *packetRef, nh uint8, total int, s *segment) (uint8, verdict) {
	for range maxIPv6Extensions {
		switch nh {
		case uint8(header.TCPProtocolNumber):
			return nh, verdictCandidate
		case ipv6HopByHop, ipv6Routing, ipv6DestOptions:
		case ipv6Fragment:
			return nh, parseIPv6Fragment(r, total, s)
		default:
			s.reason = cPassNotTCP
			if isIPv6ExtensionHeader(nh) {
				s.reason = cPassIPOptions
			}
			return nh, verdictPass
		}
		off := s.ipLen
		b, ok := r.pullUp(off + 8)
		if !ok || off+8 > total {
			s.reason = cPassMalformed
			return nh, verdictPass
		}
		// A routing header with segments left is not for this node yet:
		// netstack discards it (RFC 8200 4.4), and its TCP checksum
		// covers a destination that is not in the IPv6 header.
		if nh == ipv6Routing && b[off+3] != 0 {
			s.reason = cPassIPOptions
			return nh, verdictPass
		}
		nh, s.ipLen = b[off], off+(int(b[off+1])+1)*8
	}
	if nh == uint8(header.TCPProtocolNumber) {
		return nh, verdictCandidate
	}
	s.reason = cPassIPOptions
	return nh, verdictPass
}

// parseIPv6Fragment names the flow of a first fragment by its ports, as
// parseFragment does for IPv4: the flow's held packet goes up first. Even
// an atomic fragment (RFC 6946) passes, as in Linux, whose GRO has no
// handler for the fragment header (gro.c ip_frag6).
func parseIPv6Fragment(r *packetRef, total int, s *segment) verdict {
	s.reason = cPassFragment
	off := s.ipLen
	b, ok := r.pullUp(off + 8 + 4)
	if !ok || off+8+4 > total {
		return verdictPass
	}
	if binary.BigEndian.Uint16(b[off+2:])>>3 != 0 || b[off] != uint8(header.TCPProtocolNumber) {
		return verdictPass
	}
	s.hdr = b
	s.ipLen = off + 8
	s.fragment = true
	s.key.ports = binary.BigEndian.Uint32(b[s.ipLen:])
	s.key.link = r.linkID()
	return verdictPassFlow
}

// parseTCP parses the TCP header that follows s.ipLen bytes of IP header in
// an IP packet of total bytes carried in size bytes.
func parseTCP(r *packetRef, total, size int, s *segment) verdict {
	b, ok := r.pullUp(s.ipLen + header.TCPMinimumSize)
	if !ok || total < s.ipLen+header.TCPMinimumSize {
		s.reason = cPassMalformed
		return verdictPass
	}
	off := int(header.TCP(b[s.ipLen:]).DataOffset())
	if off < header.TCPMinimumSize || s.ipLen+off > total {
		s.reason = cPassMalformed
		return verdictPass
	}
	if b, ok = r.pullUp(s.ipLen + off); !ok {
		s.reason = cPassMalformed
		return verdictPass
	}
	s.hdr = b
	s.tcpLen = off
	s.payload = total - s.ipLen - off
	tcp := s.tcp()
	s.seq, s.ack, s.window, s.flags = tcp.SequenceNumber(), tcp.AckNumber(), tcp.WindowSize(), tcp.Flags()
	s.key.ports = uint32(tcp.SourcePort())<<16 | uint32(tcp.DestinationPort())
	s.key.link = r.linkID()
	return classifySegment(s, total, size)
}

// classifySegment applies the merge rules that need only the segment
// itself. Each refusal names its rule.
func classifySegment(s *segment, total, size int) verdict {
	// Ethernet pads short frames; netstack trims, merging would not.
	if total != size {
		s.reason = cPassPadding
		return verdictPassFlow
	}
	// IPv4 options never merge (inet_lro lro_tcp_ip_check: ihl != 5).
	if s.ipLen != header.IPv4MinimumSize && !s.v6 {
		s.reason = cPassIPOptions
		return verdictPassFlow
	}
	// Only data segments with ACK and none of SYN/FIN/RST/URG
	// (lro_tcp_ip_check, and tcp_gro_receive's final check). ECE and
	// CWR depend on the mode: see refusesECN.
	const refused = header.TCPFlagSyn | header.TCPFlagFin | header.TCPFlagRst |
		header.TCPFlagUrg
	if s.payload == 0 || s.flags&header.TCPFlagAck == 0 || s.flags&refused != 0 {
		s.reason = cPassTCPFlags
		return verdictPassFlow
	}
	// A CE mark must reach TCP on its own segment (RFC 3168 6.1.3).
	if s.tos&ecnMask == ecnCE {
		s.reason = cPassTCPFlags
		return verdictPassFlow
	}
	if !parseTimestamp(s) {
		s.reason = cPassTCPOptions
		return verdictPassFlow
	}
	return verdictCandidate
}

// parseTimestamp accepts no options or exactly NOP,NOP,timestamp
// (lro_tcp_ip_check) and reads TSval and TSecr at their fixed offsets.
func parseTimestamp(s *segment) bool {
	s.ts = false
	switch s.tcpLen {
	case header.TCPMinimumSize:
		return true
	case header.TCPMinimumSize + header.TCPOptionTSLength + 2:
		o := s.hdr[s.ipLen+header.TCPMinimumSize:]
		if o[0] != header.TCPOptionNOP || o[1] != header.TCPOptionNOP ||
			o[2] != header.TCPOptionTS || o[3] != header.TCPOptionTSLength {
			return false
		}
		s.ts = true
		s.tsVal = binary.BigEndian.Uint32(o[4:])
		s.tsEcr = binary.BigEndian.Uint32(o[8:])
		return true
	}
	return false
}

// IPv6 extension headers (RFC 8200 4.1).
const (
	ipv6HopByHop    = 0
	ipv6Routing     = 43
	ipv6Fragment    = 44
	ipv6DestOptions = 60
)

// isIPv6ExtensionHeader reports whether nh names an IPv6 extension header
// (RFC 8200 4.1, plus AH and ESP, which also precede TCP).
func isIPv6ExtensionHeader(nh uint8) bool {
	switch nh {
	case 0, 43, 44, 50, 51, 60, 135, 139, 140:
		return true
	}
	return false
}

// ECN field of the IPv4 TOS or IPv6 traffic class (RFC 3168 5).
const (
	ecnMask = 0x3
	ecnCE   = 0x3
)
