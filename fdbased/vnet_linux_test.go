package fdbased

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
)

// TestVNetHdrRead sends frames with virtio_net_hdrs over a socketpair and
// checks what is delivered and what is dropped: partial checksums
// completed, TCP super-packets delivered whole past the MTU, bad headers
// dropped and counted. An MTU of 1500 puts an odd number of checksummed
// bytes in a super-packet's first view, 1501 an even one.
func TestVNetHdrRead(t *testing.T) {
	small := testpacket.TCP{Payload: testpacket.Payload(1, 1000)}.Bytes()
	big4 := testpacket.TCP{Payload: testpacket.Payload(2, 40000)}.Bytes()
	big6 := testpacket.TCP{V6: true, Payload: testpacket.Payload(3, 60001)}.Bytes()
	largest := testpacket.TCP{V6: true, Payload: testpacket.Payload(4, 0xffff-header.TCPMinimumSize)}.Bytes()
	partialSmall, at := partial(small, false)
	partialBig4, _ := partial(big4, false)
	partialBig6, at6 := partial(big6, true)
	partialLargest, _ := partial(largest, true)
	const tcpCsum = 16 // offset of the TCP checksum field

	tests := []struct {
		name   string
		hdr    []byte
		frame  []byte
		want   []byte // delivered frame; nil: dropped
		gso    bool
		counts func(Stats) uint64 // the drop counter, when dropped
	}{
		{name: "no offload", hdr: vnetZero[:], frame: small, want: small},
		{name: "partial checksum", hdr: vnetHeader(vnetFlagNeedsCsum, vnetGSONone, uint16(at), tcpCsum), frame: partialSmall, want: small},
		{name: "TCPv4 super-packet", hdr: vnetHeader(vnetFlagNeedsCsum, vnetGSOTCPv4, uint16(at), tcpCsum), frame: partialBig4, want: big4, gso: true},
		{name: "TCPv6 super-packet", hdr: vnetHeader(vnetFlagNeedsCsum, vnetGSOTCPv6, uint16(at6), tcpCsum), frame: partialBig6, want: big6, gso: true},
		{name: "largest super-packet", hdr: vnetHeader(vnetFlagNeedsCsum, vnetGSOTCPv6, uint16(at6), tcpCsum), frame: partialLargest, want: largest, gso: true},
		{name: "super-packet with ECN", hdr: vnetHeader(0, vnetGSOTCPv4|vnetGSOECN, 0, 0), frame: big4, want: big4, gso: true},
		{name: "past the MTU, no GSO", hdr: vnetZero[:], frame: big4,
			counts: func(s Stats) uint64 { return s.DroppedOversized }},
		{name: "past 64 KiB", hdr: vnetHeader(0, vnetGSOTCPv6, 0, 0), frame: append(append([]byte(nil), largest...), 0),
			counts: func(s Stats) uint64 { return s.DroppedOversized }},
		{name: "UDP super-packet", hdr: vnetHeader(0, 3, 0, 0), frame: big4,
			counts: func(s Stats) uint64 { return s.DroppedVNetHdr }},
		{name: "checksum field past the first view", hdr: vnetHeader(vnetFlagNeedsCsum, vnetGSOTCPv4, 3000, tcpCsum), frame: big4,
			counts: func(s Stats) uint64 { return s.DroppedVNetHdr }},
		{name: "checksum field past the frame", hdr: vnetHeader(vnetFlagNeedsCsum, vnetGSONone, uint16(len(small)-1), 0), frame: small,
			counts: func(s Stats) uint64 { return s.DroppedVNetHdr }},
		{name: "header cut short", hdr: vnetZero[:5],
			counts: func(s Stats) uint64 { return s.DroppedVNetHdr }},
	}
	for _, mtu := range []uint32{1500, 1501} {
		for _, tc := range tests {
			for _, dk := range []string{"packets", "fragments"} {
				t.Run(fmt.Sprintf("mtu%d/%s/%s", mtu, tc.name, dk), func(t *testing.T) {
					ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
					require.NoError(t, unix.SetsockoptInt(peer, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20))
					e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: mtu, VNetHdr: true})
					r := newRecorder()
					if dk == "packets" {
						e.Attach(plainDispatcher{r})
					} else {
						e.Attach(fragDispatcher{r})
					}
					writeFrame(t, peer, append(append([]byte(nil), tc.hdr...), tc.frame...))
					// A frame after it shows that the first was dealt with.
					writeFrame(t, peer, append(append([]byte(nil), vnetZero[:]...), small...))
					waitUntil(t, "both frames", r.notify, func() bool { return e.Stats().Frames == 2 && uint64(len(r.frames())) == e.Stats().Delivered() })

					st := e.Stats()
					frames := r.frames()
					if tc.want == nil {
						require.Len(t, frames, 1)
						assert.Equal(t, uint64(1), tc.counts(st))
						assert.Zero(t, st.GSOFrames)
						return
					}
					require.Len(t, frames, 2)
					assert.Equal(t, tc.want, frames[0].data)
					_, _, err := testpacket.Check(frames[0].data)
					assert.NoError(t, err)
					assert.Equal(t, small, frames[1].data)
					wantViews, wantGSO := 1, uint64(0)
					if len(tc.want) > int(mtu)+1 {
						wantViews = 2
					}
					if tc.gso {
						wantGSO = 1
					}
					assert.Equal(t, wantViews, frames[0].views)
					assert.Equal(t, wantGSO, st.GSOFrames)
					assert.Equal(t, uint64(2), st.Delivered())
				})
			}
		}
	}
}

// TestVNetHdrWrite: every frame written starts with a virtio_net_hdr
// that asks for nothing.
func TestVNetHdrWrite(t *testing.T) {
	for _, st := range socketTypes {
		t.Run(st.name, func(t *testing.T) {
			ours, peer := socketPair(t, st.typ)
			e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, VNetHdr: true})
			want := [][]byte{testpacket.TCP{Payload: []byte("one")}.Bytes(), testpacket.TCP{Payload: []byte("two")}.Bytes()}
			var pkts stack.PacketBufferList
			for _, b := range want {
				pkts.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)}))
			}
			defer pkts.Reset()
			n, err := e.WritePackets(pkts)
			require.Nil(t, err)
			require.Equal(t, len(want), n)
			for _, w := range want {
				got := readFrame(t, peer, 4096)
				require.Equal(t, append(append([]byte(nil), vnetZero[:]...), w...), got)
			}
		})
	}
}

// TestVNetReadEINVAL: a read that the kernel fails with EINVAL for a
// packet it could not describe in a virtio_net_hdr is a dropped frame, not
// the end of the fd; without VNetHdr it is an error like any other.
func TestVNetReadEINVAL(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		fd, _ := socketPair(t, unix.SOCK_SEQPACKET)
		e := newTestEndpoint(t, &Options{FDs: []int{fd}, MTU: 1500, VNetHdr: vnet})
		r := e.sys.links[0].r
		assert.Equal(t, vnet, vnetDropped(r.vnetDrops, unix.EINVAL))
		assert.False(t, vnetDropped(r.vnetDrops, unix.EBADF))
		assert.False(t, vnetDropped(r.vnetDrops, 0))
		st := e.Stats()
		if vnet {
			assert.Equal(t, Stats{Frames: 1, DroppedVNetHdr: 1}, st)
		} else {
			assert.Zero(t, st)
		}
		assert.Zero(t, st.Delivered())
	}
}
