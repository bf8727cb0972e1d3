package fdbased

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
)

var socketTypes = []struct {
	name string
	typ  int
}{
	{"seqpacket", unix.SOCK_SEQPACKET},
	{"dgram", unix.SOCK_DGRAM},
}

// TestFrameSizes sends a frame of every size from empty to past the
// buffer, and checks that each is delivered whole or dropped and counted,
// on both paths, with and without Ethernet, read with recvmmsg (the
// default for a socket) and with read(2), forced.
func TestFrameSizes(t *testing.T) {
	const mtu = 1500
	for _, st := range socketTypes {
		for _, src := range []Source{SourceRecvmmsg, SourceRead} {
			for _, eth := range []bool{false, true} {
				for _, dk := range dispatcherKinds {
					t.Run(fmt.Sprintf("%s/%s/ethernet=%t/%s", st.name, src, eth, dk.name), func(t *testing.T) {
						testFrameSizes(t, st.typ, src, eth, mtu, dk.make)
					})
				}
			}
		}
	}
}

func testFrameSizes(t *testing.T, typ int, src Source, eth bool, mtu int, makeDispatcher func(*recorder) stack.NetworkDispatcher) {
	ours, peer := socketPair(t, typ)
	hdr := 0
	if eth {
		hdr = header.EthernetMinimumSize
	}
	e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: uint32(mtu), EthernetHeader: eth, Address: ourMAC, Source: src})
	r := newRecorder()
	d := makeDispatcher(r)
	e.Attach(d)

	var sizes []int
	for n := 0; n <= hdr+mtu+2; n++ {
		sizes = append(sizes, n)
	}
	sizes = append(sizes, hdr+mtu+500) // truncated by the kernel

	var want Stats
	var delivered [][]byte
	for i, n := range sizes {
		frame := makeFrame(n, eth, ourMAC, i)
		writeFrame(t, peer, frame)
		want.Frames++
		want.Bytes += uint64(min(n, hdr+mtu+1))
		switch {
		case n > hdr+mtu:
			want.DroppedOversized++
		case n < hdr+header.IPv4MinimumSize:
			want.DroppedRunt++
		default:
			delivered = append(delivered, frame)
		}
	}
	waitFrames(t, e, r, want.Frames)

	got := e.Stats()
	assert.Equal(t, want.Frames, got.Frames)
	assert.Equal(t, want.Bytes, got.Bytes)
	assert.Equal(t, want.DroppedRunt, got.DroppedRunt)
	assert.Equal(t, want.DroppedOversized, got.DroppedOversized)
	assert.Equal(t, uint64(len(delivered)), got.Delivered())

	frames := r.frames()
	require.Len(t, frames, len(delivered))
	_, isFrag := d.(fragDispatcher)
	for i, ev := range frames {
		frame := delivered[i]
		require.Equal(t, hdr, len(ev.link), "frame %d link header", i)
		require.Equal(t, string(frame[:hdr]), string(ev.link), "frame %d link header", i)
		require.Equal(t, frame[hdr:], ev.data, "frame %d", i)
		assert.Equal(t, header.IPv4ProtocolNumber, ev.proto)
		assert.Equal(t, isFrag, ev.fragments)
		assert.Equal(t, 1, ev.views, "one view per frame")
		assert.False(t, ev.validated)
		if !isFrag {
			assert.Equal(t, header.IPv4ProtocolNumber, ev.pktProto)
		}
	}

	flushes := len(r.snapshot()) - len(frames)
	if _, ok := d.(interface{ Flush() }); ok {
		assert.Equal(t, int(got.Batches), flushes, "one Flush per batch")
		evs := r.snapshot()
		assert.True(t, evs[len(evs)-1].flush, "the last batch ended with Flush")
	} else {
		assert.Zero(t, flushes)
	}
	assert.NotZero(t, got.Batches)
	assert.InDelta(t, float64(got.Frames)/float64(got.Batches), got.MeanBatch(), 1e-9)
}

// TestBatchEnds queues frames before dispatch starts, so that the batches
// are known: full ones of BatchSize, then the rest.
func TestBatchEnds(t *testing.T) {
	const batch, frames = 8, 20
	for _, st := range socketTypes {
		for _, dk := range dispatcherKinds[1:] { // those that end batches
			t.Run(st.name+"/"+dk.name, func(t *testing.T) {
				ours, peer := socketPair(t, st.typ)
				e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, BatchSize: batch})
				for i := range frames {
					writeFrame(t, peer, makeFrame(100+i, false, "", i))
				}
				r := newRecorder()
				e.Attach(dk.make(r))
				waitFrames(t, e, r, frames)

				var shape []int // frames per batch
				n := 0
				for _, ev := range r.snapshot() {
					if ev.flush {
						shape = append(shape, n)
						n = 0
						continue
					}
					n++
				}
				assert.Equal(t, []int{8, 8, 4}, shape)
				assert.Zero(t, n, "no frame after the last Flush")
				s := e.Stats()
				assert.Equal(t, uint64(3), s.Batches)
				assert.InDelta(t, 20.0/3, s.MeanBatch(), 1e-9)
			})
		}
	}
}

func TestDestinationFilter(t *testing.T) {
	tests := []struct {
		name    string
		dst     tcpip.LinkAddress
		deliver bool
	}{
		{"our MAC", ourMAC, true},
		{"another unicast MAC", otherMAC, false},
		{"broadcast", header.EthernetBroadcastAddress, true},
		{"IPv4 multicast", "\x01\x00\x5e\x00\x00\x01", true},
		{"IPv6 multicast", "\x33\x33\x00\x00\x00\x01", true},
	}
	for _, tc := range tests {
		for _, dk := range dispatcherKinds {
			t.Run(tc.name+"/"+dk.name, func(t *testing.T) {
				ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
				e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, EthernetHeader: true, Address: ourMAC})
				r := newRecorder()
				e.Attach(dk.make(r))
				writeFrame(t, peer, makeFrame(100, true, tc.dst, 1))
				waitFrames(t, e, r, 1)
				s := e.Stats()
				if tc.deliver {
					assert.Len(t, r.frames(), 1)
					assert.Zero(t, s.DroppedNotForUs)
					return
				}
				assert.Empty(t, r.frames())
				assert.Equal(t, uint64(1), s.DroppedNotForUs)
			})
		}
	}
}

func TestNetworkProtocol(t *testing.T) {
	tests := []struct {
		name    string
		eth     bool
		first   byte                        // first byte of the network header
		ethType tcpip.NetworkProtocolNumber // with eth
		want    tcpip.NetworkProtocolNumber // 0: dropped as not IP
	}{
		{name: "IPv4", first: 0x45, want: header.IPv4ProtocolNumber},
		{name: "IPv6", first: 0x60, want: header.IPv6ProtocolNumber},
		{name: "version 5", first: 0x55},
		{name: "version 0", first: 0x00},
		{name: "Ethernet ARP", eth: true, ethType: header.ARPProtocolNumber, want: header.ARPProtocolNumber},
		{name: "Ethernet IPv6", eth: true, ethType: header.IPv6ProtocolNumber, want: header.IPv6ProtocolNumber},
		{name: "Ethernet unknown type", eth: true, ethType: 0x88b5, want: 0x88b5},
	}
	for _, tc := range tests {
		for _, dk := range dispatcherKinds {
			t.Run(tc.name+"/"+dk.name, func(t *testing.T) {
				ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
				e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, EthernetHeader: tc.eth, Address: ourMAC})
				r := newRecorder()
				e.Attach(dk.make(r))
				frame := makeFrame(100, tc.eth, ourMAC, 1)
				hdr := 0
				if tc.eth {
					hdr = header.EthernetMinimumSize
					header.Ethernet(frame).Encode(&header.EthernetFields{SrcAddr: peerMAC, DstAddr: ourMAC, Type: tc.ethType})
				}
				frame[hdr] = tc.first
				writeFrame(t, peer, frame)
				waitFrames(t, e, r, 1)
				if tc.want == 0 {
					assert.Empty(t, r.frames())
					assert.Equal(t, uint64(1), e.Stats().DroppedNotIP)
					return
				}
				got := r.frames()
				require.Len(t, got, 1)
				assert.Equal(t, tc.want, got[0].proto)
				assert.Equal(t, frame[hdr:], got[0].data)
			})
		}
	}
}

func TestRXChecksumOffload(t *testing.T) {
	for _, offload := range []bool{false, true} {
		t.Run(fmt.Sprint(offload), func(t *testing.T) {
			ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
			e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, RXChecksumOffload: offload})
			r := newRecorder()
			e.Attach(plainDispatcher{r})
			writeFrame(t, peer, makeFrame(100, false, "", 1))
			waitFrames(t, e, r, 1)
			require.Len(t, r.frames(), 1)
			assert.Equal(t, offload, r.frames()[0].validated)
		})
	}
}

func TestSetMTU(t *testing.T) {
	ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
	e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 100})
	r := newRecorder()
	e.Attach(fragDispatcher{r})
	writeFrame(t, peer, makeFrame(150, false, "", 1))
	waitFrames(t, e, r, 1)
	assert.Equal(t, uint64(1), e.Stats().DroppedOversized)

	e.SetMTU(200) // the reader is waiting; it sizes views anew after the wait
	writeFrame(t, peer, makeFrame(150, false, "", 2))
	waitFrames(t, e, r, 2)
	got := r.frames()
	require.Len(t, got, 1)
	assert.Equal(t, makeFrame(150, false, "", 2), got[0].data)

	e.SetMTU(60)
	writeFrame(t, peer, makeFrame(100, false, "", 3))
	writeFrame(t, peer, makeFrame(60, false, "", 4))
	waitFrames(t, e, r, 4)
	assert.Equal(t, uint64(2), e.Stats().DroppedOversized)
	got = r.frames()
	require.Len(t, got, 2)
	assert.Equal(t, makeFrame(60, false, "", 4), got[1].data)
}

func TestSeveralFDs(t *testing.T) {
	const fds, frames = 3, 50
	ours, peers := socketPairs(t, fds)
	e := newTestEndpoint(t, &Options{FDs: ours, MTU: 1500})
	r := newRecorder()
	e.Attach(fragDispatcher{r})
	for i := range frames {
		for k, p := range peers {
			writeFrame(t, p, makeFrame(64+i, false, "", k<<16|i))
		}
	}
	waitFrames(t, e, r, fds*frames)
	// Each fd's frames arrive in order; fds interleave.
	next := make([]int, fds)
	for _, ev := range r.frames() {
		seq := int(ev.data[4])<<24 | int(ev.data[5])<<16 | int(ev.data[6])<<8 | int(ev.data[7])
		k, i := seq>>16, seq&0xffff
		require.Equal(t, next[k], i, "fd %d out of order", k)
		next[k]++
	}
	assert.Equal(t, []int{frames, frames, frames}, next)
}

// TestSeveralFDsQueues: with an rxbatch.MultiQueue dispatcher (the engine),
// fd i's frames and batch ends go to its Queue(i), fd 0's included, so
// that one fd's batch end never flushes another fd's sessions.
func TestSeveralFDsQueues(t *testing.T) {
	const fds, segs = 3, 40
	ours, peers := socketPairs(t, fds)
	e := newTestEndpoint(t, &Options{FDs: ours, MTU: 1500})
	r := newRecorder()
	engine, err := lro.New(r, lro.Config{FlushDelay: -1})
	require.NoError(t, err)
	e.Attach(engine)

	want := make(map[uint16][]byte)
	for k, p := range peers {
		port := uint16(1000 + k)
		want[port] = testpacket.Payload(uint64(k), segs*1000)
		for _, seg := range testpacket.Segments(testpacket.TCP{SrcPort: port}, want[port], 1000) {
			writeFrame(t, p, seg)
		}
	}
	// Each fd's last batch end flushes its queue, so every byte reaches
	// the recorder.
	streams := func() map[uint16][]byte {
		got := make(map[uint16][]byte)
		for _, ev := range r.frames() {
			tcp, payload, err := testpacket.Check(ev.data)
			require.NoError(t, err)
			got[tcp.SourcePort()] = append(got[tcp.SourcePort()], payload...)
		}
		return got
	}
	waitUntil(t, "every segment to be delivered", r.notify, func() bool {
		n := 0
		for _, b := range streams() {
			n += len(b)
		}
		return n == fds*segs*1000
	})
	assert.Equal(t, want, streams())
	for k := range fds {
		st := engine.Queue(k).(*lro.Queue).Stats()
		assert.Equal(t, uint64(segs), st.PacketsIn, "queue %d: fd %d's segments, no other's", k, k)
		assert.NotZero(t, st.FlushBatch, "queue %d: ended by its fd's batch ends", k)
		assert.Zero(t, st.Held(), "queue %d: its fd's last batch end flushed it", k)
	}
}

// queues is a user's rxbatch.MultiQueue, not the engine: a fragDispatcher
// per queue.
type queues []fragDispatcher

func (q queues) Queue(i int) stack.NetworkDispatcher { return q[i] }

func (q queues) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	panic("a MultiQueue dispatcher gets frames on its queues")
}

func (q queues) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	panic("DeliverLinkPacket called")
}

// TestSeveralFDsOwnQueues: any rxbatch.MultiQueue, not only the engine,
// gets fd i's frames and batch ends on its Queue(i).
func TestSeveralFDsOwnQueues(t *testing.T) {
	const fds, frames = 3, 20
	ours, peers := socketPairs(t, fds)
	e := newTestEndpoint(t, &Options{FDs: ours, MTU: 1500})
	qs := make(queues, fds)
	for k := range qs {
		qs[k] = fragDispatcher{newRecorder()}
	}
	e.Attach(qs)
	for i := range frames {
		for k, p := range peers {
			writeFrame(t, p, makeFrame(64+i, false, "", k<<16|i))
		}
	}
	for k, q := range qs {
		waitUntil(t, "the queue's frames and their batch end", q.notify, func() bool {
			ev := q.snapshot()
			return len(q.frames()) == frames && ev[len(ev)-1].flush
		})
		for i, ev := range q.frames() {
			require.True(t, ev.fragments)
			seq := int(ev.data[4])<<24 | int(ev.data[5])<<16 | int(ev.data[6])<<8 | int(ev.data[7])
			require.Equal(t, k<<16|i, seq, "queue %d: fd %d's frames, in order", k, k)
		}
	}
}
