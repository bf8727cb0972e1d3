package lro

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// splitGSO splits a merged packet back into segments as a GSO engine does
// (Linux's tcp_gso_segment under inet_gso_segment or ipv6_gso_segment):
// payloads of mss bytes, the last one shorter; each segment's sequence
// number advanced by the payload before it; the IPv4 ID incremented per
// segment unless fixedID (SKB_GSO_TCP_FIXEDID); IP lengths, the IPv4
// header checksum and the TCP checksum recomputed; PSH and FIN on the last
// segment only; CWR kept on every segment (SKB_GSO_TCP_ACCECN, which
// current Linux sets for a merged packet that carries CWR). Everything else
// is copied from the merged packet's headers.
func splitGSO(pkt []byte, mss int, fixedID bool) [][]byte {
	v6 := pkt[0]>>4 == 6
	ipLen := testpacket.IPHeaderLen(pkt)
	tcp := header.TCP(pkt[ipLen:])
	hdrLen := ipLen + int(tcp.DataOffset())
	hdr, payload := pkt[:hdrLen], pkt[hdrLen:]
	seq, flags := tcp.SequenceNumber(), tcp.Flags()
	var id uint16
	if !v6 {
		id = header.IPv4(pkt).ID()
	}
	var out [][]byte
	for i := 0; i == 0 || len(payload) > 0; i++ {
		n := min(mss, len(payload))
		seg := append(bytes.Clone(hdr), payload[:n]...)
		payload = payload[n:]
		t := header.TCP(seg[ipLen:])
		t.SetSequenceNumber(seq + uint32(i*mss))
		if len(payload) > 0 {
			t.SetFlags(uint8(flags &^ (header.TCPFlagPsh | header.TCPFlagFin)))
		}
		if v6 {
			header.IPv6(seg).SetPayloadLength(uint16(len(seg) - header.IPv6MinimumSize))
		} else {
			ip := header.IPv4(seg)
			ip.SetTotalLength(uint16(len(seg)))
			if !fixedID {
				ip.SetID(id + uint16(i))
			}
		}
		testpacket.SetTCPChecksum(seg, v6)
		out = append(out, seg)
	}
	return out
}

// flowOf names the TCP flow of a raw IP packet, or returns "" for one
// too short to name it.
func flowOf(b []byte) string {
	if len(b) < header.IPv4MinimumSize {
		return ""
	}
	addrs := b[12:20]
	if b[0]>>4 == 6 {
		if len(b) < header.IPv6MinimumSize {
			return ""
		}
		addrs = b[8:40]
	}
	l := testpacket.IPHeaderLen(b)
	if l < 0 || len(b) < l+4 {
		return ""
	}
	return fmt.Sprintf("%x/%x", addrs, b[l:l+4])
}

// payloadLen returns the TCP payload bytes of a valid packet.
func payloadLen(b []byte) int {
	_, p, err := testpacket.Check(b)
	if err != nil {
		return -1
	}
	return len(p)
}

// checkResegmentable checks the promise of Resegmentable mode on what an
// engine delivered (out) for what arrived (in): each packet out is either
// one that arrived, unchanged, or a merge that splitGSO turns back into
// consecutive arrivals of one flow, byte for byte. splitGSO is given what
// a GRO engine records with a merge for GSO (Linux's gso_size and
// SKB_GSO_TCP_FIXEDID): the first segment's payload size, and whether the
// IPv4 IDs of the first two were equal. Every arrival comes out exactly
// once, and per flow the valid segments keep their order.
func checkResegmentable(in, out [][]byte) error {
	used := make([]bool, len(in))
	last := map[string]int{} // flow -> index of the last valid arrival out
	take := func(i int) error {
		used[i] = true
		if _, _, err := testpacket.Check(in[i]); err != nil {
			return nil // bad input may pass its flow: no order to keep
		}
		f := flowOf(in[i])
		if j, ok := last[f]; ok && j > i {
			return fmt.Errorf("arrival %d came out after arrival %d of its flow", i, j)
		}
		last[f] = i
		return nil
	}
	for k, o := range out {
		i := indexUnused(in, used, func(b []byte) bool { return bytes.Equal(b, o) })
		if i >= 0 {
			if err := take(i); err != nil {
				return err
			}
			continue
		}
		tcp, _, err := testpacket.Check(o)
		if err != nil {
			return fmt.Errorf("packet %d out is neither an arrival nor valid: %v", k, err)
		}
		f, seq := flowOf(o), tcp.SequenceNumber()
		i = indexUnused(in, used, func(b []byte) bool {
			t, _, err := testpacket.Check(b)
			return err == nil && flowOf(b) == f && t.SequenceNumber() == seq
		})
		if i < 0 {
			return fmt.Errorf("packet %d out starts at no arrival (seq %d)", k, seq)
		}
		// The arrivals a split must give back: the next unused ones
		// of the flow, in order.
		var next []int
		for j := i; j < len(in); j++ {
			if !used[j] && flowOf(in[j]) == f {
				next = append(next, j)
			}
		}
		fixedID := o[0]>>4 == 4 && len(next) > 1 &&
			binary.BigEndian.Uint16(in[next[0]][4:]) == binary.BigEndian.Uint16(in[next[1]][4:])
		segs := splitGSO(o, payloadLen(in[i]), fixedID)
		if len(segs) > len(next) {
			return fmt.Errorf("packet %d out splits into %d segments, %d arrivals left in its flow", k, len(segs), len(next))
		}
		for n, seg := range segs {
			if !bytes.Equal(seg, in[next[n]]) {
				return fmt.Errorf("packet %d out, segment %d of %d:\nsplit   %x\narrived %x", k, n, len(segs), seg, in[next[n]])
			}
			if err := take(next[n]); err != nil {
				return err
			}
		}
	}
	for i, u := range used {
		if !u {
			return fmt.Errorf("arrival %d never came out", i)
		}
	}
	return nil
}

func indexUnused(in [][]byte, used []bool, match func([]byte) bool) int {
	for i, b := range in {
		if !used[i] && match(b) {
			return i
		}
	}
	return -1
}

// TestResegment holds Resegmentable mode's promise on streams that end
// merges in every way the engine knows: split back GSO-style, each merged
// packet gives back exactly the segments that arrived.
func TestResegment(t *testing.T) {
	mss := []int{1448}
	reseg := Config{Resegmentable: true}
	tests := []struct {
		name   string
		cfg    Config
		v4only bool
		v6only bool
		tsonly bool
		sizes  []int
		n      int
		mut    func(i int, s *testpacket.TCP)
		want   int // packets out
	}{
		{name: "equal segments", sizes: mss, n: 20, want: 1},
		{name: "short last segment", sizes: []int{1448, 1448, 700, 1448}, n: 4, want: 2},
		{name: "odd sizes", sizes: []int{1001, 1001, 1001, 3}, n: 8, want: 2},
		{name: "MaxSegments", cfg: Config{MaxSegments: 3}, sizes: mss, n: 10, want: 4},
		{name: "MaxBytes", cfg: Config{MaxBytes: 3000}, sizes: mss, n: 7, want: 4},
		{name: "65535 bytes", cfg: Config{MaxSegments: 100}, sizes: mss, n: 60, want: 2},
		{name: "PSH", sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) {
			if i == 2 {
				s.Flags = header.TCPFlagAck | header.TCPFlagPsh
			}
		}, want: 2},
		{name: "CWR run", sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) {
			if i == 2 || i == 3 {
				s.Flags = header.TCPFlagAck | header.TCPFlagCwr
			}
		}, want: 3},
		{name: "ECE run", sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) {
			if i >= 3 {
				s.Flags = header.TCPFlagAck | header.TCPFlagEce
			}
		}, want: 2},
		{name: "ACK change", sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) { s.Ack = uint32(i / 3) }, want: 2},
		{name: "window change", sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) { s.Window = uint16(100 + i/2) }, want: 3},
		{name: "timestamp change", tsonly: true, sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) { s.TSVal = uint32(i / 2) }, want: 3},
		{name: "IPv4 IDs increment across wrap", v4only: true, sizes: mss, n: 6,
			mut: func(i int, s *testpacket.TCP) { s.ID = 0xfffd + uint16(i) }, want: 1},
		{name: "IPv4 IDs fixed", v4only: true, sizes: mss, n: 6, mut: func(i int, s *testpacket.TCP) { s.ID = 7 }, want: 1},
		{name: "IPv4 IDs fixed then incrementing", v4only: true, sizes: mss, n: 6,
			mut: func(i int, s *testpacket.TCP) { s.ID = uint16(max(0, i-2)) }, want: 2},
		{name: "IPv4 IDs incrementing, then fixed", v4only: true, sizes: mss, n: 6,
			mut: func(i int, s *testpacket.TCP) { s.ID = uint16(min(i, 3)) }, want: 2},
		{name: "IPv4 IDs random", v4only: true, sizes: mss, n: 4,
			mut: func(i int, s *testpacket.TCP) { s.ID = uint16(i * 7919) }, want: 4},
		{name: "IPv4 DF changes", v4only: true, sizes: mss, n: 6,
			mut: func(i int, s *testpacket.TCP) { s.DontFragment = i < 3; s.ID = uint16(i) }, want: 2},
		{name: "IPv6 flow label changes", v6only: true, sizes: mss, n: 6,
			mut: func(i int, s *testpacket.TCP) { s.FlowLabel = uint32(i / 3) }, want: 2},
		{name: "IPv4 IDs fixed without DF", v4only: true, sizes: mss, n: 6,
			mut: func(i int, s *testpacket.TCP) { s.DontFragment = false; s.ID = 7 }, want: 1},
		{name: "urgent pointer changes", sizes: mss, n: 4, mut: func(i int, s *testpacket.TCP) {
			if i == 2 {
				s.Urgent = 5
			}
		}, want: 3},
	}
	type variant struct {
		v6, ts bool
		ext    []testpacket.IPv6Ext
	}
	variants := []variant{{}, {ts: true}, {v6: true}, {v6: true, ts: true},
		{v6: true, ts: true, ext: []testpacket.IPv6Ext{{Type: testpacket.IPv6HopByHop, Body: []byte{5, 2, 0, 0}}, {Type: testpacket.IPv6DestOptions, Body: make([]byte, 14)}}},
		{v6: true, ext: []testpacket.IPv6Ext{{Type: testpacket.IPv6Routing, Body: []byte{0, 0}}}},
	}
	for _, tt := range tests {
		for _, vr := range variants {
			if (vr.v6 && tt.v4only) || (!vr.v6 && tt.v6only) || (!vr.ts && tt.tsonly) {
				continue
			}
			for _, p := range paths {
				name := fmt.Sprintf("%s/v6=%v/ts=%v/ext=%d/%s", tt.name, vr.v6, vr.ts, len(vr.ext), p)
				t.Run(name, func(t *testing.T) {
					cfg := tt.cfg
					cfg.Resegmentable = reseg.Resegmentable
					tmpl := testpacket.TCP{V6: vr.v6, TS: vr.ts, TSVal: 5, TSEcr: 6, IPv6Ext: vr.ext, DontFragment: true, Seq: 0xffffe000}
					in := stream(tmpl, tt.sizes, tt.n, tt.mut)
					rec := &recorder{}
					e := newEngine(t, rec, cfg)
					for _, b := range in {
						feed(e, p, b)
					}
					e.Flush()
					out := packetsOf(rec.take())
					require.NoError(t, checkResegmentable(in, out))
					require.Equal(t, tt.want, len(out), "packets out")
				})
			}
		}
	}
}
