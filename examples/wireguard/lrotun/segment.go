package lrotun

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// segment cuts pkt, a TCP packet with segmentation offload, into segments
// of at most mss payload bytes, as a NIC's TSO (or Linux's tcp_gso_segment)
// does: each segment has the packet's IP and TCP headers with its own
// sequence number, IPv4 ID and lengths; FIN and PSH only on the last,
// CWR only on the first; full checksums. It starts at payload offset from,
// writes one segment per buffer, bufs[i][offset:], and returns how many
// buffers it filled and the payload offset it stopped at.
func segment(pkt *stack.PacketBuffer, from, mss int, bufs [][]byte, sizes []int, offset int) (int, int) {
	ip := pkt.NetworkHeader().Slice()
	tcpHdr := header.TCP(pkt.TransportHeader().Slice())
	data := pkt.Data()
	total := data.Size()
	hdrLen := len(ip) + len(tcpHdr)
	if mss <= 0 || len(tcpHdr) < header.TCPMinimumSize {
		mss = max(total, 1) // not a TCP packet we can cut: send it whole
	}
	payload := pkt.AsSlices()
	n := 0
	for n < len(bufs) && (from < total || (total == 0 && n == 0 && from == 0)) {
		dst := bufs[n][offset:]
		size := min(mss, total-from)
		if hdrLen+size > len(dst) {
			size = len(dst) - hdrLen
			if size <= 0 {
				sizes[n] = 0 // no room for even the headers: drop the rest
				return n + 1, total
			}
		}
		copy(dst, ip)
		th := header.TCP(dst[len(ip):hdrLen])
		copy(th, tcpHdr)
		copyRange(dst[hdrLen:hdrLen+size], payload, hdrLen+from)
		fixSegment(dst[:hdrLen+size], len(ip), from, from/mss, from+size >= total)
		sizes[n] = hdrLen + size
		n++
		from += size
		if total == 0 {
			break
		}
	}
	return n, from
}

// copyRange fills dst from the bytes of slices starting at off.
func copyRange(dst []byte, slices [][]byte, off int) {
	for _, s := range slices {
		if len(dst) == 0 {
			return
		}
		if off >= len(s) {
			off -= len(s)
			continue
		}
		c := copy(dst, s[off:])
		dst = dst[c:]
		off = 0
	}
}

// fixSegment sets the IP and TCP fields of one segment, p, whose TCP header
// starts at ipLen and whose payload starts at payload offset from of the
// original packet and which is segment number index of it.
func fixSegment(p []byte, ipLen, from, index int, last bool) {
	th := header.TCP(p[ipLen:])
	th.SetSequenceNumber(th.SequenceNumber() + uint32(from))
	flags := th.Flags()
	if !last {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if index > 0 {
		flags &^= header.TCPFlagCwr
	}
	th.SetFlags(uint8(flags))
	tcpLen := len(p) - ipLen
	var xsum uint16
	if header.IPVersion(p) == header.IPv4Version {
		ip := header.IPv4(p)
		ip.SetTotalLength(uint16(len(p)))
		// Segments of one packet need distinct IDs: consecutive ones, as
		// Linux's tcp_gso_segment gives them.
		ip.SetID(ip.ID() + uint16(index))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
	} else {
		ip := header.IPv6(p)
		ip.SetPayloadLength(uint16(len(p) - header.IPv6MinimumSize))
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
	}
	binary.BigEndian.PutUint16(p[ipLen+header.TCPChecksumOffset:], 0)
	th.SetChecksum(^checksum.Checksum(p[ipLen:], xsum))
}
