package fdbased

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// vnetHeader returns a struct virtio_net_hdr in the host's byte order.
func vnetHeader(flags, gsoType uint8, csumStart, csumOffset uint16) []byte {
	h := make([]byte, vnetHdrSize)
	h[0], h[1] = flags, gsoType
	binary.NativeEndian.PutUint16(h[6:], csumStart)
	binary.NativeEndian.PutUint16(h[8:], csumOffset)
	return h
}

// partial returns a copy of the IP packet pkt with its TCP checksum
// replaced by the pseudo-header sum, as the kernel hands over a packet
// whose checksum it left to the device (CHECKSUM_PARTIAL), and the offset
// of the TCP header.
func partial(pkt []byte, v6 bool) ([]byte, int) {
	p := append([]byte(nil), pkt...)
	ipLen := header.IPv4MinimumSize
	src, dst := header.IPv4(p).SourceAddress(), header.IPv4(p).DestinationAddress()
	if v6 {
		ipLen = header.IPv6MinimumSize
		src, dst = header.IPv6(p).SourceAddress(), header.IPv6(p).DestinationAddress()
	}
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(p)-ipLen))
	header.TCP(p[ipLen:]).SetChecksum(sum)
	return p, ipLen
}

// FuzzApplyVNetHdr: any header on any frame, split anywhere between the
// two views, never panics, never writes outside the checksum field, and a
// completed checksum is the one the kernel would have written.
func FuzzApplyVNetHdr(f *testing.F) {
	pkt, at := partial(testpacket.TCP{Payload: testpacket.Payload(1, 3001)}.Bytes(), false)
	f.Add(vnetHeader(vnetFlagNeedsCsum, vnetGSOTCPv4, uint16(at), 16), pkt, uint16(1501), uint16(1500))
	f.Add(vnetHeader(vnetFlagNeedsCsum, vnetGSONone, uint16(at), 16), pkt[:1000], uint16(1000), uint16(1500))
	f.Add(vnetHeader(0, 3, 0, 0), pkt, uint16(7), uint16(1500))
	f.Add([]byte{1, 2, 3}, pkt[:60], uint16(60), uint16(68))
	f.Fuzz(func(t *testing.T, hdr, frame []byte, split, maxFrame uint16) {
		cut := int(split) % (len(frame) + 1)
		head := append([]byte(nil), frame[:cut]...)
		tail := append([]byte(nil), frame[cut:]...)
		gso, v := applyVNetHdr(hdr, head, tail, int(maxFrame), 0)
		require.True(t, bytes.Equal(frame[cut:], tail), "the tail is never written")
		if v != verdictDeliver {
			require.True(t, bytes.Equal(frame[:cut], head), "a refused frame is left as it was")
			return
		}
		require.True(t, len(frame) <= int(maxFrame) || gso, "past the MTU only as a super-packet")
		require.LessOrEqual(t, len(frame), maxGSOFrame(0))
		if hdr[0]&vnetFlagNeedsCsum == 0 {
			require.True(t, bytes.Equal(frame[:cut], head), "nothing to complete, nothing written")
			return
		}
		start := int(binary.NativeEndian.Uint16(hdr[6:]))
		field := start + int(binary.NativeEndian.Uint16(hdr[8:]))
		require.LessOrEqual(t, field+2, cut)
		require.True(t, bytes.Equal(frame[:field], head[:field]) && bytes.Equal(frame[field+2:cut], head[field+2:]),
			"only the checksum field is written")
		// What skb_checksum_help writes: the complement of the sum from
		// csum_start on, the field's pseudo-header sum included, 0 as
		// 0xffff.
		want := ^checksum.Checksum(frame[start:], 0)
		if want == 0 {
			want = 0xffff
		}
		require.Equal(t, want, binary.BigEndian.Uint16(head[field:]))
		if (field-start)%2 == 0 {
			// A field at an even offset, as TCP's and UDP's are: the
			// completed range and the pseudo-header sum the field held
			// add up to all ones, as a receiver's check does.
			done := append(head, tail...)
			partialSum := binary.BigEndian.Uint16(frame[field:])
			require.Equal(t, uint16(0xffff), checksum.Combine(checksum.Checksum(done[start:], 0), partialSum))
		}
	})
}
