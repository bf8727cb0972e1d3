package lro

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/csum"
)

// packetRef is the packet being processed: a PacketBuffer on the
// DeliverNetworkPacket path, a bare buffer on the receive-in-pages path, or
// the caller's bytes on the DeliverBytes path.
type packetRef struct {
	pkt *stack.PacketBuffer
	// raw is the caller's packet on the DeliverBytes path, from the
	// network header on. It is read during the call and copied from,
	// never kept.
	raw []byte
	// buf is the frame when pkt is nil. It is held by value: a pointer
	// would share pkt's escape and move every frame's Buffer to the heap.
	buf buffer.Buffer
	off int // offset of the network header in buf
	// head is the first view's bytes from the network header on, found by
	// the first pullUp: parsing pulls up three or more times per packet,
	// and finding the view each time showed in the engine's instruction
	// count (docs/results.md).
	head []byte
}

// pullUp returns the first n bytes from the network header on, contiguous,
// for reading. A link endpoint reads a frame into one view, so the bytes
// are nearly always there already; otherwise the views are pulled up.
func (r *packetRef) pullUp(n int) ([]byte, bool) {
	if r.raw != nil {
		if n < 0 || n > len(r.raw) {
			return nil, false
		}
		return r.raw[:n], true
	}
	if r.head == nil {
		l, off := r.views()
		if v := l.Front(); v != nil && off < v.Size() {
			r.head = v.AsSlice()[off:]
		}
	}
	if n >= 0 && n <= len(r.head) {
		return r.head[:n], true
	}
	// Pulling up joins views into a new one and releases the old ones:
	// head must be found again.
	r.head = nil
	return pullUpWritable(r.pkt, &r.buf, r.off, n)
}

// pullUpWritable returns the first n bytes from the network header on of
// pkt, or of buf at off if pkt is nil, contiguous and safe to write: a
// chunk shared with another buffer is copied first.
func pullUpWritable(pkt *stack.PacketBuffer, buf *buffer.Buffer, off, n int) ([]byte, bool) {
	if pkt != nil {
		return pkt.Data().PullUp(n)
	}
	v, ok := buf.PullUp(off, n)
	return v.AsSlice(), ok
}

// size returns the number of bytes from the network header on.
func (r *packetRef) size() int {
	if r.raw != nil {
		return len(r.raw)
	}
	if r.pkt != nil {
		return r.pkt.Data().Size()
	}
	return int(r.buf.Size()) - r.off
}

// sum returns the RFC 1071 sum of the n bytes at off from the network
// header on.
func (r *packetRef) sum(off, n int) uint16 {
	if r.raw != nil {
		return csum.Checksum(r.raw[off:off+n], 0)
	}
	l, base := r.views()
	return sumViews(l, base+off, n)
}

// copyTo copies into dst the bytes of the packet from off (past the
// network header) on, as many as fit.
func (r *packetRef) copyTo(dst []byte, off int) {
	if r.raw != nil {
		copy(dst, r.raw[off:])
		return
	}
	l, base := r.views()
	copyViews(l, base+off, dst)
}

// views returns the packet's views and the offset of the network header in
// them. The caller's bytes (raw) have none.
func (r *packetRef) views() (buffer.ViewList, int) {
	if r.pkt != nil {
		l, off := r.pkt.AsViewList()
		// Inbound packets push nothing: the data starts past what the
		// link endpoint consumed.
		return l, off + r.pkt.HeaderSize()
	}
	return r.buf.AsViewList(), r.off
}

// linkID returns the link identity of the packet: the Ethernet source
// address and, for an 802.1Q header, the VLAN ID. inet_lro keyed flows by
// addresses and ports only, so two VLANs carrying the same 4-tuple merged.
//
// It copies the bytes it needs rather than pulling the link header up:
// pulling up may join views, or copy a shared chunk, and release the view
// the parsed headers point into.
func (r *packetRef) linkID() uint64 {
	if r.raw != nil {
		return 0 // from the network header on: no link header
	}
	var l buffer.ViewList
	var off, n int
	if r.pkt != nil {
		// Inbound, all a packet has consumed is its link header.
		l, off = r.pkt.AsViewList()
		n = r.pkt.HeaderSize()
	} else {
		l, n = r.buf.AsViewList(), r.off
	}
	var raw [header.EthernetMinimumSize + 4]byte
	lh := raw[:copyViews(l, off, raw[:min(n, len(raw))])]
	if len(lh) < header.EthernetMinimumSize {
		return 0
	}
	var id uint64
	for _, b := range lh[6:12] {
		id = id<<8 | uint64(b)
	}
	const tpid8021Q = 0x8100
	if len(lh) >= header.EthernetMinimumSize+4 && binary.BigEndian.Uint16(lh[12:]) == tpid8021Q {
		id |= uint64(binary.BigEndian.Uint16(lh[14:])&0xfff) << 48
	}
	return id
}

// copyViews copies into dst the bytes of l from off on, as many as fit,
// and returns how many it copied. It walks the views as sumViews does.
func copyViews(l buffer.ViewList, off int, dst []byte) int {
	n := 0
	for v := l.Front(); v != nil && n < len(dst); v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

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
	size := r.size()
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
