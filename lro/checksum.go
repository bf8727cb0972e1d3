package lro

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/csum"
)

// sumViews returns the RFC 1071 sum of n bytes of l from off on, each
// view's sum concatenated at its offset (csum.Concat). The payload is most
// of the bytes the engine touches, so it is summed with internal/csum
// (AVX2 on amd64), which is equal to gVisor's checksum on every input and
// faster on a segment's payload (docs/results.md).
func sumViews(l buffer.ViewList, off, n int) uint16 {
	var sum uint16
	at := 0
	for v := l.Front(); v != nil && n > 0; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		if len(b) > n {
			b = b[:n]
		}
		sum = csum.Concat(sum, csum.Checksum(b, 0), at)
		at += len(b)
		n -= len(b)
	}
	return sum
}

// hdrSum adds the big-endian 32-bit words of b to acc. Every header the
// engine sums (IPv4 and TCP headers, addresses) is a whole number of
// words, and a few of them cannot overflow 64 bits. Every merged segment
// needs three header sums, which this loop does with less work than
// gVisor's general checksum, which handles alignment and odd lengths on
// every call; it loads two words at a time, which costs fewer instructions
// than one (docs/results.md; TestHdrSum checks it against gVisor's).
func hdrSum(acc uint64, b []byte) uint64 {
	for ; len(b) >= 8; b = b[8:] {
		w := binary.BigEndian.Uint64(b)
		acc += w>>32 + w&0xffffffff
	}
	if len(b) >= 4 {
		acc += uint64(binary.BigEndian.Uint32(b))
	}
	return acc
}

// fold reduces a sum of 16- or 32-bit words to 16 bits with end-around
// carries (2^16 = 1 modulo 2^16-1). Like gVisor's checksum, it returns 0
// only for a sum of 0, so a valid header sums to 0xffff.
func fold(acc uint64) uint16 {
	acc = acc&0xffffffff + acc>>32
	acc = acc&0xffff + acc>>16
	acc = acc&0xffff + acc>>16
	acc = acc&0xffff + acc>>16
	return uint16(acc)
}

// ipv4HeaderValid reports whether the IPv4 header hdr, whose length the
// parser checked, has a valid checksum.
func ipv4HeaderValid(hdr []byte) bool { return fold(hdrSum(0, hdr)) == 0xffff }

// pseudoHeaderSum returns the sum of the TCP pseudo-header (RFC 9293
// 3.1, RFC 8200 8.1) of the IP header hdr for a TCP length of n, read
// straight from the address bytes: building tcpip.Addresses to sum them
// cost more than the sum.
func pseudoHeaderSum(hdr []byte, v6 bool, n int) uint64 {
	addrs := hdr[12:20]
	if v6 {
		addrs = hdr[8:40]
	}
	return hdrSum(uint64(header.TCPProtocolNumber)+uint64(n), addrs)
}

// verifySegment checks the IPv4 header checksum and the TCP checksum of s
// and keeps the payload's sum in s.sum, so the payload is summed once
// (gro.dispatch4 sums it and forgets; wireguard-go's checksumValid too).
// If the lower endpoint already validated the packet, nothing is compared,
// but the payload is still summed: with the sender's checksum offload the
// TCP checksum field may hold only the pseudo-header's sum (Linux
// CHECKSUM_PARTIAL over veth or AF_PACKET), so it cannot stand in for the
// payload's, and a merged packet must carry a real checksum.
func verifySegment(r *packetRef, s *segment, validated bool) bool {
	if s.fragment {
		// Its TCP checksum covers bytes that are not here yet.
		return validated || s.v6 || ipv4HeaderValid(s.hdr[:s.ipLen])
	}
	if !validated && !s.v6 && !ipv4HeaderValid(s.hdr[:s.ipLen]) {
		return false
	}
	s.sum = r.sum(s.ipLen+s.tcpLen, s.payload)
	if validated {
		return true
	}
	acc := pseudoHeaderSum(s.hdr, s.v6, s.tcpLen+s.payload) + uint64(s.sum)
	return fold(hdrSum(acc, s.hdr[s.ipLen:s.ipLen+s.tcpLen])) == 0xffff
}

// setChecksums rewrites the IPv4 header checksum and the TCP checksum of a
// merged packet whose headers are hdr and whose payload of payload bytes
// sums to sum.
func setChecksums(hdr []byte, v6 bool, ipLen, tcpLen, payload int, sum uint16) {
	if !v6 {
		ip := header.IPv4(hdr)
		ip.SetChecksum(0)
		ip.SetChecksum(^fold(hdrSum(0, hdr[:ipLen])))
	}
	tcp := header.TCP(hdr[ipLen : ipLen+tcpLen])
	tcp.SetChecksum(0)
	acc := pseudoHeaderSum(hdr, v6, tcpLen+payload) + uint64(sum)
	tcp.SetChecksum(^fold(hdrSum(acc, tcp)))
}

// verifyForOffload checks, for a packet that passes through while the link
// claims RXChecksumOffload, what netstack would then skip: the IPv4 header
// checksum and TCP and UDP checksums. It returns false with the drop
// reason for a packet that fails or cannot be checked.
func verifyForOffload(r *packetRef, proto tcpip.NetworkProtocolNumber) (counter, bool) {
	size := r.size
	switch proto {
	case header.IPv4ProtocolNumber:
		return verifyIPv4ForOffload(r, size)
	case header.IPv6ProtocolNumber:
		return verifyIPv6ForOffload(r, size)
	}
	return 0, true
}

func verifyIPv4ForOffload(r *packetRef, size int) (counter, bool) {
	b, ok := r.pullUp(header.IPv4MinimumSize)
	if !ok || !header.IPv4(b).IsValid(size) {
		return cDropUnverifiable, false
	}
	hlen := int(header.IPv4(b).HeaderLength())
	if b, ok = r.pullUp(hlen); !ok {
		return cDropUnverifiable, false
	}
	ip := header.IPv4(b)
	if !ip.IsChecksumValid() {
		return cDropBadChecksum, false
	}
	tp := ip.TransportProtocol()
	if tp != header.TCPProtocolNumber && tp != header.UDPProtocolNumber {
		return 0, true
	}
	// Nobody would check the reassembled packet's transport checksum.
	if ip.FragmentOffset() != 0 || ip.Flags()&header.IPv4FlagMoreFragments != 0 {
		return cDropUnverifiable, false
	}
	return verifyTransport(r, tp, ip.SourceAddress(), ip.DestinationAddress(), hlen, int(ip.TotalLength()), false)
}

func verifyIPv6ForOffload(r *packetRef, size int) (counter, bool) {
	b, ok := r.pullUp(header.IPv6MinimumSize)
	if !ok || !header.IPv6(b).IsValid(size) {
		return cDropUnverifiable, false
	}
	ip := header.IPv6(b)
	src, dst := ip.SourceAddress(), ip.DestinationAddress()
	end := header.IPv6MinimumSize + int(ip.PayloadLength())
	nh, off := ip.NextHeader(), header.IPv6MinimumSize
	// Walk at most a handful of extension headers; netstack allows more,
	// but a packet that needs more is not worth the engine's time.
	for range 8 {
		switch tcpip.TransportProtocolNumber(nh) {
		case header.TCPProtocolNumber, header.UDPProtocolNumber:
			return verifyTransport(r, tcpip.TransportProtocolNumber(nh), src, dst, off, end, true)
		}
		switch nh {
		case 0, 43, 60, 51: // hop-by-hop, routing, destination options, AH
			if b, ok = r.pullUp(off + 2); !ok || off+2 > end {
				return cDropUnverifiable, false
			}
			n := (int(b[off+1]) + 1) * 8
			if nh == 51 {
				n = (int(b[off+1]) + 2) * 4
			}
			nh, off = b[off], off+n
		case 44: // fragment
			if b, ok = r.pullUp(off + 8); !ok || off+8 > end {
				return cDropUnverifiable, false
			}
			if tp := tcpip.TransportProtocolNumber(b[off]); tp == header.TCPProtocolNumber || tp == header.UDPProtocolNumber {
				return cDropUnverifiable, false
			}
			return 0, true
		default:
			return 0, true
		}
	}
	return cDropUnverifiable, false
}

// verifyTransport checks the TCP or UDP checksum of the transport segment
// at [off, end) of the IP packet.
func verifyTransport(r *packetRef, tp tcpip.TransportProtocolNumber, src, dst tcpip.Address, off, end int, v6 bool) (counter, bool) {
	minLen := header.TCPMinimumSize
	if tp == header.UDPProtocolNumber {
		minLen = header.UDPMinimumSize
	}
	b, ok := r.pullUp(off + minLen)
	if !ok || off+minLen > end {
		return cDropUnverifiable, false
	}
	n := end - off
	if tp == header.UDPProtocolNumber {
		udp := header.UDP(b[off:])
		// A zero UDP checksum over IPv4 means none was sent (RFC 768).
		if udp.Checksum() == 0 && !v6 {
			return 0, true
		}
		if int(udp.Length()) < header.UDPMinimumSize || int(udp.Length()) > n {
			return cDropUnverifiable, false
		}
		n = int(udp.Length())
	}
	xsum := header.PseudoHeaderChecksum(tp, src, dst, uint16(n))
	if checksum.Combine(xsum, r.sum(off, n)) != 0xffff {
		return cDropBadChecksum, false
	}
	return 0, true
}
