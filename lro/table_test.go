package lro

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/faketime"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// flowDigests returns, per flow (source port), the SHA-256 of the
// concatenated payloads of the packets in out, checking every one's
// checksums.
func flowDigests(t *testing.T, out []delivered) map[uint16]string {
	t.Helper()
	m := map[uint16][]byte{}
	for _, d := range out {
		tcp, p, err := testpacket.Check(d.data)
		require.NoError(t, err)
		m[tcp.SourcePort()] = append(m[tcp.SourcePort()], p...)
	}
	return digests(m)
}

func digests(m map[uint16][]byte) map[uint16]string {
	out := make(map[uint16]string, len(m))
	for k, v := range m {
		out[k] = fmt.Sprintf("%x", sha256.Sum256(v))
	}
	return out
}

func TestInterleavedFlows(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			const flows, segs = 5, 20
			rec := &recorder{}
			e := newEngine(t, rec, Config{MaxFlows: 8})
			want := map[uint16][]byte{}
			streams := make([][][]byte, flows)
			for f := range flows {
				port := uint16(1000 + f)
				payload := testpacket.Payload(uint64(f), segs*1000)
				want[port] = payload
				streams[f] = testpacket.Segments(testpacket.TCP{V6: v6, SrcPort: port}, payload, 1000)
			}
			for i := range segs {
				for f := range flows {
					feed(e, viaPacket, streams[f][i])
				}
			}
			e.Flush()
			out := rec.take()
			assert.Equal(t, flows, len(out), "each flow merged into one packet")
			assert.Equal(t, digests(want), flowDigests(t, out))
		})
	}
}

func TestEviction(t *testing.T) {
	rec := &recorder{}
	e := newEngine(t, rec, Config{MaxFlows: 2, Shards: 1})
	seg := func(port uint16, seq uint32) []byte {
		return testpacket.TCP{SrcPort: port, Seq: seq, Payload: []byte("hello")}.Bytes()
	}
	feed(e, viaPacket, seg(1, 0))
	feed(e, viaPacket, seg(2, 0))
	feed(e, viaPacket, seg(1, 5)) // flow 1 stays the oldest session
	feed(e, viaPacket, seg(3, 0)) // evicts flow 1
	out := rec.take()
	require.Equal(t, 1, len(out))
	tcp, p, err := testpacket.Check(out[0].data)
	require.NoError(t, err)
	assert.Equal(t, uint16(1), tcp.SourcePort())
	assert.Equal(t, "hellohello", string(p))
	assert.Equal(t, uint64(1), e.Stats().FlushEvict)
	e.Flush()
	assert.Equal(t, 2, len(rec.take()))
	assert.Zero(t, e.Stats().Held())
}

// TestFlowFlood sends far more flows than the table holds: the table never
// grows and every byte still arrives.
func TestFlowFlood(t *testing.T) {
	rec := &recorder{}
	e := newEngine(t, rec, Config{MaxFlows: 16})
	const n = 5000
	for i := range n {
		feed(e, viaPacket, testpacket.TCP{SrcPort: uint16(i), DstPort: uint16(i >> 16), Payload: []byte{byte(i)}}.Bytes())
	}
	e.Flush()
	out := rec.take()
	assert.Equal(t, n, len(out))
	total := 0
	for range e.own.shards {
		total += e.own.perShard
	}
	assert.Equal(t, 16, total)
	assert.Equal(t, uint64(n-16), e.Stats().FlushEvict)
}

// TestLinkIdentity: the same 4-tuple from two link sources or two VLANs
// is two flows (inet_lro keyed by addresses and ports only).
func TestLinkIdentity(t *testing.T) {
	eth := func(src byte, vlan uint16) []byte {
		h := make([]byte, header.EthernetMinimumSize)
		h[6+5] = src
		h[12], h[13] = 0x08, 0x00
		if vlan != 0 {
			h = append(h[:12], 0x81, 0x00, byte(vlan>>8), byte(vlan), 0x08, 0x00)
		}
		return h
	}
	segs := stream(testpacket.TCP{}, []int{100}, 4, nil)
	for _, tc := range []struct {
		name string
		a, b []byte
	}{
		{"link source", eth(1, 0), eth(2, 0)},
		{"VLAN", eth(1, 10), eth(1, 20)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{}
			e := newEngine(t, rec, Config{})
			for i, s := range segs {
				l := tc.a
				if i%2 == 1 {
					l = tc.b
				}
				e.DeliverFragments(header.IPv4ProtocolNumber, len(l), buffer.MakeWithData(append(bytes.Clone(l), s...)))
			}
			e.Flush()
			out := rec.take()
			// Each link sees a gap, so nothing merges across links.
			for _, d := range out {
				_, p, err := testpacket.Check(d.data)
				require.NoError(t, err)
				assert.Equal(t, 100, len(p))
			}
			assert.Equal(t, 4, len(out))
			assert.Equal(t, tc.a, out[0].link, "the link header is kept")
		})
	}
}

// TestParseLeavesViews: parsing reads a frame where its views are, even
// when its link header is split between views or its chunk is shared with
// another packet. Pulling the link header up would join the views, or copy
// the chunk, and release what the parsed headers point into.
func TestParseLeavesViews(t *testing.T) {
	seg := stream(testpacket.TCP{}, []int{100}, 1, nil)[0]
	plain := append(make([]byte, header.EthernetMinimumSize), seg...)
	plain[11], plain[12], plain[13] = 7, 0x08, 0x00
	tagged := append(append(bytes.Clone(plain[:12]), 0x81, 0x00, 0x00, 0x2a, 0x08, 0x00), seg...)
	releaseBuf := func(r *packetRef) { r.src.buf.Release() }
	split := func(frame []byte, at int) buffer.Buffer {
		b := buffer.MakeWithData(frame[:at])
		rest := buffer.MakeWithData(frame[at:])
		b.Merge(&rest)
		return b
	}
	for _, tc := range []struct {
		name   string
		ref    func() (packetRef, func(*packetRef)) // the ref, and how to release it
		wantID uint64
	}{
		{"link header split", func() (packetRef, func(*packetRef)) {
			return frameOf(split(plain, 5), header.EthernetMinimumSize), releaseBuf
		}, 7},
		{"VLAN tag split", func() (packetRef, func(*packetRef)) {
			return frameOf(split(tagged, 15), len(tagged)-len(seg)), releaseBuf
		}, 42<<48 | 7},
		{"shared chunk", func() (packetRef, func(*packetRef)) {
			orig := testpacket.NewPacket(plain)
			orig.LinkHeader().Consume(header.EthernetMinimumSize)
			return packetOf(orig.Clone()), func(r *packetRef) { r.src.pkt.DecRef(); orig.DecRef() }
		}, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, release := tc.ref()
			defer release(&r)
			// Where each view's bytes start: addresses, compared as
			// numbers (assert.Equal would compare what pointers point to).
			starts := func() []uintptr {
				var out []uintptr
				for v := r.views.Front(); v != nil; v = v.Next() {
					out = append(out, uintptr(unsafe.Pointer(unsafe.SliceData(v.AsSlice()))))
				}
				return out
			}
			before := starts()
			var s segment
			require.Equal(t, verdictCandidate, parseSegment(&r, header.IPv4ProtocolNumber, &s))
			assert.Equal(t, tc.wantID, s.key.link)
			assert.Equal(t, before, starts(), "the frame's views moved")
		})
	}
}

func TestFlushTimer(t *testing.T) {
	clock := faketime.NewManualClock()
	rec := &recorder{}
	e := newEngine(t, rec, Config{FlushDelay: time.Millisecond, Clock: clock})
	in := stream(testpacket.TCP{}, []int{100}, 3, nil)
	for _, b := range in {
		feed(e, viaPacket, b)
	}
	clock.Advance(999 * time.Microsecond)
	assert.Empty(t, rec.take(), "held until the delay passes")
	clock.Advance(time.Microsecond)
	requirePartition(t, in, rec.take(), []int{3})
	assert.Equal(t, uint64(1), e.Stats().FlushTimer)

	// A Flush before the timer fires leaves it nothing to do, and the next
	// hold arms it again.
	more := stream(testpacket.TCP{Seq: 300}, []int{100}, 2, nil)
	feed(e, viaPacket, more[0])
	e.Flush()
	assert.Equal(t, 1, len(rec.take()))
	clock.Advance(time.Millisecond)
	feed(e, viaPacket, more[1])
	clock.Advance(time.Millisecond)
	assert.Equal(t, 1, len(rec.take()))
	assert.Equal(t, uint64(2), e.Stats().FlushTimer)

	// The timer armed by an old hold does not deliver a young session
	// early: a session started just before it fires waits for its own
	// deadline.
	late := stream(testpacket.TCP{Seq: 500}, []int{100}, 2, nil)
	feed(e, viaPacket, late[0]) // arms the timer
	e.Flush()
	require.Equal(t, 1, len(rec.take()))
	clock.Advance(900 * time.Microsecond)
	feed(e, viaPacket, late[1]) // held while the timer is armed
	clock.Advance(100 * time.Microsecond)
	assert.Empty(t, rec.take(), "100 µs old: not due")
	clock.Advance(900 * time.Microsecond)
	assert.Equal(t, 1, len(rec.take()), "due after its own FlushDelay")
	assert.Equal(t, uint64(3), e.Stats().FlushTimer)
	e.Close()
}

// TestCloseDeliversAndStopsHolding: after Close nothing is held.
func TestCloseDeliversAndStopsHolding(t *testing.T) {
	rec := &recorder{}
	e := newEngine(t, rec, Config{})
	in := stream(testpacket.TCP{}, []int{100}, 4, nil)
	feed(e, viaPacket, in[0])
	feed(e, viaPacket, in[1])
	e.Close()
	feed(e, viaPacket, in[2])
	feed(e, viaFragments, in[3])
	assert.Equal(t, 3, len(rec.take()))
	assert.Zero(t, e.Stats().Held())
}

// TestConcurrentDeliverers runs one flow per goroutine with Flush calls
// from every goroutine and a flush timer, under the race detector: every
// byte arrives, in order, with one table lock or several.
func TestConcurrentDeliverers(t *testing.T) {
	for _, cfg := range []Config{
		{MaxFlows: 8, FlushDelay: 50 * time.Microsecond},
		{MaxFlows: 64, Shards: 4, FlushDelay: 50 * time.Microsecond},
		{MaxFlows: 4, Shards: 2}, // evictions across goroutines
	} {
		t.Run(fmt.Sprintf("flows=%d/shards=%d", cfg.MaxFlows, cfg.Shards), func(t *testing.T) {
			const workers, segs = 4, 300
			rec := &recorder{}
			e := newEngine(t, rec, cfg)
			want := map[uint16][]byte{}
			streams := make([][][]byte, workers)
			for w := range workers {
				port := uint16(2000 + w)
				want[port] = testpacket.Payload(uint64(w), segs*500)
				streams[w] = testpacket.Segments(testpacket.TCP{V6: w%2 == 1, SrcPort: port}, want[port], 500)
			}
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					for i, b := range streams[w] {
						feed(e, path(i%2), b)
						if i%17 == 0 {
							e.Flush()
						}
					}
				})
			}
			wg.Wait()
			e.Close()
			assert.Equal(t, digests(want), flowDigests(t, rec.take()))
			st := e.Stats()
			assert.Equal(t, uint64(workers*segs), st.PacketsIn)
			assert.Zero(t, st.Held())
		})
	}
}

// TestQueues: each receive queue has its own table and its Flush touches
// only it, queue 0 included; the engine New returned flushes, counts and
// closes them all.
func TestQueues(t *testing.T) {
	rec := &recorder{}
	e := newEngine(t, rec, Config{})
	q0, q1, q2 := e.queue(0), e.queue(1), e.queue(2)
	require.NotSame(t, e.own, q0, "queue 0 has a table of its own, so its Flush ends only its sessions")
	require.Same(t, q0, e.queue(0))
	require.Same(t, q1, e.queue(1))
	require.Same(t, q1, e.Queue(1), "Queue is queue as a stack.NetworkDispatcher")
	a := stream(testpacket.TCP{SrcPort: 1}, []int{100}, 3, nil)
	b := stream(testpacket.TCP{SrcPort: 2}, []int{100}, 3, nil)
	c := stream(testpacket.TCP{SrcPort: 3}, []int{100}, 3, nil)
	for i := range a {
		feed(q1, viaPacket, a[i])
		feed(q2, viaFragments, b[i])
		feed(q0, viaPacket, c[i])
	}
	q1.Flush()
	requirePartition(t, a, rec.take(), []int{3})
	q0.Flush()
	requirePartition(t, c, rec.take(), []int{3})
	st := e.Stats()
	assert.Equal(t, uint64(9), st.PacketsIn)
	assert.Equal(t, uint64(1), st.Held(), "queue 2 still holds its flow")
	e.Flush()
	requirePartition(t, b, rec.take(), []int{3})

	feed(q2, viaPacket, a[0])
	e.Close()
	assert.Equal(t, 1, len(rec.take()), "Close flushes every queue")
	feed(e.queue(3), viaPacket, a[1])
	assert.Equal(t, 1, len(rec.take()), "a queue made after Close holds nothing")
	assert.Zero(t, e.Stats().Held())
}

// TestQueuesConcurrent: goroutines on their own queues, under the race
// detector, with the engine's Flush from another goroutine.
func TestQueuesConcurrent(t *testing.T) {
	rec := &recorder{}
	e := newEngine(t, rec, Config{})
	want := map[uint16][]byte{}
	var wg sync.WaitGroup
	for w := range 3 {
		port := uint16(3000 + w)
		want[port] = testpacket.Payload(uint64(w), 200*700)
		segs := testpacket.Segments(testpacket.TCP{V6: w == 1, SrcPort: port}, want[port], 700)
		q := e.queue(w)
		wg.Go(func() {
			for i, b := range segs {
				feed(q, path(i%2), b)
				if i%9 == 0 {
					q.Flush()
				}
			}
		})
	}
	wg.Go(func() {
		for range 50 {
			e.Flush()
		}
	})
	wg.Wait()
	e.Close()
	assert.Equal(t, digests(want), flowDigests(t, rec.take()))
}

// TestCloseWhileQueuesAreMade: a queue made while Close runs is closed
// too, so it holds nothing after Close returns.
func TestCloseWhileQueuesAreMade(t *testing.T) {
	seg := stream(testpacket.TCP{SrcPort: 1}, []int{100}, 1, nil)[0]
	for range 200 {
		rec := &recorder{}
		e := newEngine(t, rec, Config{})
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range 8 {
				e.queue(i)
			}
		})
		wg.Go(e.Close)
		wg.Wait()
		for i := range 8 {
			feed(e.queue(i), viaPacket, seg)
		}
		require.Zero(t, e.Stats().Held(), "a queue made during Close holds a packet")
		require.Len(t, rec.take(), 8)
	}
}

// TestFlowKeyEqual: equal agrees with == on keys that differ in any one
// byte, so a field added to flowKey and left out of equal fails here.
func TestFlowKeyEqual(t *testing.T) {
	var base flowKey
	for i := range base.src {
		base.src[i], base.dst[i] = byte(i), byte(100+i)
	}
	base.ports, base.proto, base.link = 0x03e807d0, 4, 0x0200_0000_0001
	require.True(t, base.equal(&base))
	size := int(unsafe.Sizeof(base))
	for i := range size {
		k := base
		(*[unsafe.Sizeof(flowKey{})]byte)(unsafe.Pointer(&k))[i] ^= 0x10
		assert.Equal(t, k == base, k.equal(&base), "byte %d of %d", i, size)
	}
}
