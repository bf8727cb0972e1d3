package fdbased

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/csum"
)

// vnetHdrSize is the size of struct virtio_net_hdr
// (include/uapi/linux/virtio_net.h) without num_buffers: what a TAP or TUN
// device opened with IFF_VNET_HDR, or an AF_PACKET socket with
// PACKET_VNET_HDR, puts before every frame unless told another size.
const vnetHdrSize = 10

// Fields of struct virtio_net_hdr.
const (
	vnetFlagNeedsCsum = 1    // VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum is partial
	vnetGSONone       = 0    // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv4      = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOTCPv6      = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	vnetGSOECN        = 0x80 // VIRTIO_NET_HDR_GSO_ECN, a flag on the type
)

// vnetZero is a header that asks for no offload.
var vnetZero [vnetHdrSize]byte

// gsoMaxSize is the largest packet netstack may hand over for the kernel to
// segment: Linux's default gso_max_size (GSO_LEGACY_MAX_SIZE).
const gsoMaxSize = 1 << 16

// putVNetHdr fills h, the virtio_net_hdr of the frame of pkt, a packet
// with its link header (of linkHdr bytes) pushed: empty unless netstack
// asked for host GSO. Then, as gVisor's fdbased writes it for runsc, the
// checksum is partial (the pseudo-header sum) and the kernel completes it
// from csum_start on, and a packet with more than one segment's payload is
// a TCP super-packet for the kernel to cut into segments of MSS bytes.
func putVNetHdr(h *[vnetHdrSize]byte, pkt *stack.PacketBuffer, linkHdr int) {
	*h = vnetZero
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		return
	}
	ne := binary.NativeEndian
	if gso.NeedsCsum {
		h[0] = vnetFlagNeedsCsum
		ne.PutUint16(h[6:], uint16(linkHdr)+gso.L3HdrLen)
		ne.PutUint16(h[8:], gso.CsumOffset)
	}
	if pkt.Data().Size() <= int(gso.MSS) {
		return
	}
	switch gso.Type {
	case stack.GSOTCPv4:
		h[1] = vnetGSOTCPv4
	case stack.GSOTCPv6:
		h[1] = vnetGSOTCPv6
	default:
		return // gVisor's own GSO segments before it writes
	}
	ne.PutUint16(h[2:], uint16(pkt.HeaderSize()))
	ne.PutUint16(h[4:], gso.MSS)
}

// maxGSOFrame is the longest frame a TCP super-packet may be: the link
// header, an IPv6 header and the largest payload its 16-bit length field
// allows (an IPv4 packet is shorter still).
func maxGSOFrame(hdrSize int) int { return hdrSize + header.IPv6MinimumSize + 0xffff }

// applyVNetHdr checks a frame against its virtio_net_hdr hdr and completes
// a partial checksum in place. The frame's first bytes are head and the
// rest, if any, tail. A frame longer than maxFrame (link header and MTU)
// is accepted only as a TCP super-packet (GSO TCPv4 or TCPv6, the kernel's
// TSO) no longer than maxGSOFrame. A checksum flagged
// VIRTIO_NET_HDR_F_NEEDS_CSUM holds the pseudo-header sum; it becomes the
// complement of the sum from csum_start to the end, as the kernel's
// skb_checksum_help makes it, and its field must lie in head. gso reports
// a TCP super-packet type; why is keep, dropOversized or dropVNetHdr. It
// never reads or writes past head and tail.
//
// The header's 16-bit fields are in the host's byte order: legacy virtio,
// which TUN/TAP and AF_PACKET use unless TUNSETVNETLE or TUNSETVNETBE
// says otherwise.
func applyVNetHdr(hdr, head, tail []byte, maxFrame, hdrSize int) (gso bool, why dropReason) {
	if len(hdr) < vnetHdrSize {
		return false, dropVNetHdr
	}
	n := len(head) + len(tail)
	switch hdr[1] &^ vnetGSOECN {
	case vnetGSONone:
		if n > maxFrame {
			return false, dropOversized
		}
	case vnetGSOTCPv4, vnetGSOTCPv6:
		gso = true
		if n > maxGSOFrame(hdrSize) {
			return gso, dropOversized
		}
	default:
		// A UDP super-packet (or a type this reader does not know)
		// would reach netstack as one datagram of many: refuse it. Only
		// TCP offloads are turned on for the device.
		return false, dropVNetHdr
	}
	if hdr[0]&vnetFlagNeedsCsum == 0 {
		return gso, keep
	}
	start := int(binary.NativeEndian.Uint16(hdr[6:]))
	field := start + int(binary.NativeEndian.Uint16(hdr[8:]))
	if field+2 > len(head) {
		return gso, dropVNetHdr
	}
	sum := sumFrom(head, tail, start)
	c := ^sum
	if c == 0 {
		c = 0xffff // skb_checksum_help's CSUM_MANGLED_0: UDP reads 0 as none
	}
	binary.BigEndian.PutUint16(head[field:], c)
	return gso, keep
}

// sumFrom returns the RFC 1071 sum of the frame head+tail from byte start
// on. start is at most len(head).
func sumFrom(head, tail []byte, start int) uint16 {
	a := head[start:]
	return csum.Concat(csum.Checksum(a, 0), csum.Checksum(tail, 0), len(a))
}
