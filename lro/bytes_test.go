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
// gets.
type viewCounter struct {
	recorder
	views []int
}

func (v *viewCounter) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	n := 0
	l, _ := pkt.AsViewList()
	for x := l.Front(); x != nil; x = x.Next() {
		n++
	}
	v.views = append(v.views, n)
	v.recorder.DeliverNetworkPacket(proto, pkt)
}

// TestBytesMergeIntoOneView: segments handed over as the caller's bytes,
// overwritten after each call, reach netstack as one packet whose payload
// is one view (the held packet's own pooled buffer, which each payload is
// copied into; the headers have a small view of their own), with the stream and checksums intact, odd payload lengths (odd
// offsets of the later payloads) and IPv6 extension headers included. A
// session started by one path and continued by another merges too.
func TestBytesMergeIntoOneView(t *testing.T) {
	ext := []testpacket.IPv6Ext{{Type: testpacket.IPv6DestOptions, Body: []byte{1, 4, 0, 0, 0, 0}}}
	for _, tt := range []struct {
		name  string
		tmpl  testpacket.TCP
		sizes []int
		paths []path // per segment, round robin
		views int    // of the merged packet
	}{
		{"v4", testpacket.TCP{TS: true}, []int{1448}, []path{viaBytes}, 2},
		{"v4 odd lengths", testpacket.TCP{}, []int{1447, 1, 999, 1448}, []path{viaBytes}, 2},
		{"v6", testpacket.TCP{V6: true, TS: true}, []int{1428}, []path{viaBytes}, 2},
		{"v6 extension headers, odd", testpacket.TCP{V6: true, IPv6Ext: ext}, []int{1427, 3}, []path{viaBytes}, 2},
		{"bytes then packets", testpacket.TCP{}, []int{1447}, []path{viaBytes, viaPacket, viaFragments}, 2},
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
			assert.Equal(t, []int{tt.views}, rec.views, "views of the merged packet")
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
