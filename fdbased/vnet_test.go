package fdbased

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

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
		gso, why := applyVNetHdr(hdr, head, tail, int(maxFrame), 0)
		require.True(t, bytes.Equal(frame[cut:], tail), "the tail is never written")
		if why != keep {
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

// TestPutVNetHdr: the header written before each frame asks for what
// netstack's packet needs: nothing, a checksum to complete, or a TCP
// super-packet to segment.
func TestPutVNetHdr(t *testing.T) {
	const mss = 1000
	csum4 := stack.GSO{Type: stack.GSOTCPv4, NeedsCsum: true, CsumOffset: 16, MSS: mss, L3HdrLen: header.IPv4MinimumSize}
	csum6 := stack.GSO{Type: stack.GSOTCPv6, NeedsCsum: true, CsumOffset: 16, MSS: mss, L3HdrLen: header.IPv6MinimumSize}
	for _, tc := range []struct {
		name    string
		v6      bool
		payload int
		gso     stack.GSO
		linkHdr int
		want    []byte
	}{
		{"no GSO", false, 5000, stack.GSO{}, 0, vnetZero[:]},
		{"TCPv4 super-packet", false, 5000, csum4, 0, vnetHeaderFull(vnetFlagNeedsCsum, vnetGSOTCPv4, 40, mss, 20, 16)},
		{"TCPv4 super-packet behind Ethernet", false, 5000, csum4, header.EthernetMinimumSize, vnetHeaderFull(vnetFlagNeedsCsum, vnetGSOTCPv4, 54, mss, 34, 16)},
		{"TCPv6 super-packet", true, 3001, csum6, 0, vnetHeaderFull(vnetFlagNeedsCsum, vnetGSOTCPv6, 60, mss, 40, 16)},
		{"one segment: checksum only", false, mss, csum4, 0, vnetHeader(vnetFlagNeedsCsum, vnetGSONone, 20, 16)},
		{"super-packet, checksum complete", false, 5000, stack.GSO{Type: stack.GSOTCPv4, MSS: mss, L3HdrLen: 20}, 0, vnetHeaderFull(0, vnetGSOTCPv4, 40, mss, 0, 0)},
		{"gVisor's own GSO", false, 5000, stack.GSO{Type: stack.GSOGvisor, MSS: mss}, 0, vnetZero[:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			full := testpacket.TCP{V6: tc.v6, Payload: testpacket.Payload(3, tc.payload)}.Bytes()
			ipLen := header.IPv4MinimumSize
			if tc.v6 {
				ipLen = header.IPv6MinimumSize
			}
			hdrLen := ipLen + header.TCPMinimumSize
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
				ReserveHeaderBytes: tc.linkHdr + hdrLen,
				Payload:            buffer.MakeWithData(full[hdrLen:]),
			})
			defer pkt.DecRef()
			copy(pkt.TransportHeader().Push(header.TCPMinimumSize), full[ipLen:hdrLen])
			copy(pkt.NetworkHeader().Push(ipLen), full[:ipLen])
			pkt.LinkHeader().Push(tc.linkHdr)
			pkt.GSOOptions = tc.gso
			var h [vnetHdrSize]byte
			h[3] = 0xff // every byte is written
			putVNetHdr(&h, pkt, tc.linkHdr)
			require.Equal(t, tc.want, h[:])
		})
	}
}

// vnetHeaderFull is vnetHeader with hdr_len and gso_size.
func vnetHeaderFull(flags, gsoType uint8, hdrLen, gsoSize, csumStart, csumOffset uint16) []byte {
	h := vnetHeader(flags, gsoType, csumStart, csumOffset)
	binary.NativeEndian.PutUint16(h[2:], hdrLen)
	binary.NativeEndian.PutUint16(h[4:], gsoSize)
	return h
}
