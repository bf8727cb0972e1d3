package lro

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
)

// viewCounter is a recorder that also counts the views of each packet it
// gets and their pooled bytes.
type viewCounter struct {
	recorder
	views    []int
	capacity []int // the views' pooled bytes
}

func (v *viewCounter) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	n, c := 0, 0
	l, _ := pkt.AsViewList()
	for x := l.Front(); x != nil; x = x.Next() {
		n++
		c += x.Capacity()
	}
	v.views = append(v.views, n)
	v.capacity = append(v.capacity, c)
	v.recorder.DeliverNetworkPacket(proto, pkt)
}

// TestBytesMergeIntoOneView: segments handed over as the caller's bytes,
// overwritten after each call, reach netstack as one packet whose payload
// is in a few views (the held packet's own pooled views, doubling in size,
// which each payload is copied into; the headers have a small view of
// their own), with the stream and checksums intact, odd payload lengths (odd
// offsets of the later payloads) and IPv6 extension headers included. A
// session started by one path and continued by another merges too.
func TestBytesMergeIntoOneView(t *testing.T) {
	ext := []testpacket.IPv6Ext{{Type: testpacket.IPv6DestOptions, Body: []byte{1, 4, 0, 0, 0, 0}}}
	for _, tt := range []struct {
		name  string
		tmpl  testpacket.TCP
		sizes []int
		paths []path // per segment, round robin
		views int    // of the merged packet; 0: a header view and doubling payload views
	}{
		{"v4", testpacket.TCP{TS: true}, []int{1448}, []path{viaBytes}, 0},
		{"v4 odd lengths", testpacket.TCP{}, []int{1447, 1, 999, 1448}, []path{viaBytes}, 0},
		{"v6", testpacket.TCP{V6: true, TS: true}, []int{1428}, []path{viaBytes}, 0},
		{"v6 extension headers, odd", testpacket.TCP{V6: true, IPv6Ext: ext}, []int{1427, 3}, []path{viaBytes}, 0},
		{"bytes then packets", testpacket.TCP{}, []int{1447}, []path{viaBytes, viaPacket, viaFragments}, 0},
		// A PacketBuffer's session has no room: bytes join it as a view each.
		{"packets then bytes", testpacket.TCP{}, []int{1447}, []path{viaPacket, viaBytes}, 12},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var payload []byte
			for i := range 12 {
				payload = append(payload, testpacket.Payload(uint64(i), tt.sizes[i%len(tt.sizes)])...)
			}
			in := segmentsOfSizes(tt.tmpl, payload, tt.sizes)
			rec := &viewCounter{}
			e := newEngine(t, rec, Config{})
			for i, b := range in {
				feed(e, tt.paths[i%len(tt.paths)], b)
			}
			e.Flush()
			out := rec.take()
			require.Len(t, out, 1, "one merged packet")
			_, got, err := testpacket.Check(out[0].data)
			require.NoError(t, err, "headers and checksums of the merged packet")
			assert.True(t, bytes.Equal(payload, got), "the payload, in order")
			want := tt.views
			if want == 0 {
				want = 1 + doublingViews(len(payload))
			}
			assert.Equal(t, []int{want}, rec.views, "views of the merged packet")
			assert.Equal(t, uint64(len(in)-1), e.Stats().SegmentsMerged)
		})
	}
}

// segmentsOfSizes cuts payload into segments of tmpl's flow whose sizes
// repeat sizes.
func segmentsOfSizes(tmpl testpacket.TCP, payload []byte, sizes []int) [][]byte {
	var out [][]byte
	seq := tmpl.Seq
	for i := 0; len(payload) > 0; i++ {
		n := min(sizes[i%len(sizes)], len(payload))
		s := tmpl
		s.Seq, s.Payload = seq, payload[:n]
		out = append(out, s.Bytes())
		payload, seq = payload[n:], seq+uint32(n)
	}
	return out
}

// doublingViews returns how many payload views, of minRoom bytes and then
// doubling, hold n bytes.
func doublingViews(n int) int {
	views := 0
	for size := minRoom; n > 0; size = min(2*size, 1<<16) {
		n -= size
		views++
	}
	return views
}

// TestBytesViewsBounded: a merged packet of the bytes path has at most
// five payload views however large it grows, and pins at most about twice
// its bytes in pooled chunks: a lone segment is not held in a 64 KiB
// chunk, which netstack would keep until the application reads it.
func TestBytesViewsBounded(t *testing.T) {
	for _, tt := range []struct {
		name string
		segs int
	}{{"lone segment", 1}, {"three", 3}, {"full packet", 64}} {
		t.Run(tt.name, func(t *testing.T) {
			in := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, tt.segs*1000), 1000)
			rec := &viewCounter{}
			e := newEngine(t, rec, Config{})
			for _, b := range in {
				feed(e, viaBytes, b)
			}
			e.Flush()
			out := rec.take()
			require.NotEmpty(t, out)
			for i, d := range out {
				assert.LessOrEqual(t, rec.views[i], 1+5, "views of packet %d", i)
				assert.LessOrEqual(t, rec.capacity[i], 2*len(d.data)+minRoom, "pooled bytes pinned by packet %d of %d bytes", i, len(d.data))
			}
		})
	}
}
