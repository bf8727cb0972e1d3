package fdbased

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// outbound builds a packet as netstack hands one to WritePackets: a
// network header pushed in front of a payload of several views, and the
// link header added by e. It returns the packet and the bytes it must put
// on the wire.
func outbound(e *Endpoint, payloadLen, views, seq int) (*stack.PacketBuffer, []byte) {
	payload := makeFrame(payloadLen, false, "", seq)[:payloadLen]
	var buf buffer.Buffer
	for i := range views {
		lo, hi := i*payloadLen/views, (i+1)*payloadLen/views
		if lo < hi {
			buf.Append(buffer.NewViewWithData(payload[lo:hi]))
		}
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		ReserveHeaderBytes: int(e.MaxHeaderLength()) + header.IPv4MinimumSize,
		Payload:            buf,
	})
	ip := pkt.NetworkHeader().Push(header.IPv4MinimumSize)
	copy(ip, makeFrame(header.IPv4MinimumSize, false, "", seq))
	pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
	pkt.EgressRoute.LocalLinkAddress = ourMAC
	pkt.EgressRoute.RemoteLinkAddress = peerMAC
	e.AddHeader(pkt)
	var wire []byte
	if e.hdrSize > 0 {
		eth := make([]byte, header.EthernetMinimumSize)
		header.Ethernet(eth).Encode(&header.EthernetFields{SrcAddr: ourMAC, DstAddr: peerMAC, Type: header.IPv4ProtocolNumber})
		wire = eth
	}
	wire = append(wire, makeFrame(header.IPv4MinimumSize, false, "", seq)...)
	return pkt, append(wire, payload...)
}

func TestWritePackets(t *testing.T) {
	tests := []struct {
		name    string
		typ     int // 0: a pipe
		eth     bool
		packets int
		views   int
	}{
		{name: "seqpacket one", typ: unix.SOCK_SEQPACKET, packets: 1, views: 1},
		{name: "seqpacket batch", typ: unix.SOCK_SEQPACKET, packets: 40, views: 3},
		{name: "seqpacket Ethernet batch", typ: unix.SOCK_SEQPACKET, eth: true, packets: 40, views: 5},
		{name: "dgram batch", typ: unix.SOCK_DGRAM, packets: 40, views: 2},
		{name: "dgram header only", typ: unix.SOCK_DGRAM, packets: 3, views: 0},
		{name: "pipe writev", eth: true, packets: 10, views: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ours, peer int
			if tc.typ == 0 {
				var p [2]int
				require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
				t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
				ours, peer = p[1], p[0]
			} else {
				ours, peer = socketPair(t, tc.typ)
			}
			e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, EthernetHeader: tc.eth, Address: ourMAC})

			var list stack.PacketBufferList
			var want [][]byte
			for i := range tc.packets {
				n := 0
				if tc.views > 0 {
					n = 1 + i*1400/tc.packets
				}
				pkt, wire := outbound(e, n, tc.views, i)
				list.PushBack(pkt)
				want = append(want, wire)
			}
			sent, err := e.WritePackets(list)
			list.DecRef()
			require.Nil(t, err)
			require.Equal(t, tc.packets, sent)

			if tc.typ == 0 {
				// A pipe keeps no boundaries: read the whole stream.
				all := bytes.Join(want, nil)
				var got []byte
				for len(got) < len(all) {
					got = append(got, readFrame(t, peer, len(all)-len(got))...)
				}
				assert.Equal(t, all, got)
			} else {
				for i, w := range want {
					require.Equal(t, w, readFrame(t, peer, 2000), "packet %d", i)
				}
			}
			s := e.Stats()
			assert.Equal(t, uint64(tc.packets), s.Written)
			assert.Zero(t, s.WriteErrors)
		})
	}
}

// TestWritePacketsByHash checks that each packet goes to the fd its hash
// picks, as in gVisor's fdbased.
func TestWritePacketsByHash(t *testing.T) {
	ours0, peer0 := socketPair(t, unix.SOCK_SEQPACKET)
	ours1, peer1 := socketPair(t, unix.SOCK_SEQPACKET)
	e := newTestEndpoint(t, &Options{FDs: []int{ours0, ours1}, MTU: 1500})
	peers := []int{peer0, peer1}
	hashes := []uint32{0, 0, 1, 0, 1, 1, 3}
	var list stack.PacketBufferList
	want := make([][][]byte, 2)
	for i, h := range hashes {
		pkt, wire := outbound(e, 100, 2, i)
		pkt.Hash = h
		list.PushBack(pkt)
		want[h%2] = append(want[h%2], wire)
	}
	sent, err := e.WritePackets(list)
	list.DecRef()
	require.Nil(t, err)
	require.Equal(t, len(hashes), sent)
	for k, p := range peers {
		for i, w := range want[k] {
			require.Equal(t, w, readFrame(t, p, 2000), "fd %d packet %d", k, i)
		}
	}
}

// TestWriteWouldBlock fills a socket and checks that the packets that do
// not fit fail with ErrWouldBlock and are counted.
func TestWriteWouldBlock(t *testing.T) {
	ours, _ := socketPair(t, unix.SOCK_DGRAM)
	require.NoError(t, unix.SetsockoptInt(ours, unix.SOL_SOCKET, unix.SO_SNDBUF, 4096))
	e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500})
	const packets = 1000 // far more than 4 KiB of send buffer holds
	var list stack.PacketBufferList
	for i := range packets {
		pkt, _ := outbound(e, 1000, 1, i)
		list.PushBack(pkt)
	}
	sent, err := e.WritePackets(list)
	list.DecRef()
	require.IsType(t, &tcpip.ErrWouldBlock{}, err)
	require.Less(t, sent, packets)
	s := e.Stats()
	assert.Equal(t, uint64(sent), s.Written)
	assert.Equal(t, uint64(packets-sent), s.WriteErrors)
}
