package lro

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// stream builds n segments of the given payload sizes (size[i%len(size)])
// from tmpl, consecutive in sequence space, and lets mut change segment i.
func stream(tmpl testpacket.TCP, sizes []int, n int, mut func(i int, s *testpacket.TCP)) [][]byte {
	out := make([][]byte, 0, n)
	seq := tmpl.Seq
	for i := range n {
		s := tmpl
		s.Seq = seq
		s.Payload = testpacket.Payload(uint64(i+1), sizes[i%len(sizes)])
		if mut != nil {
			mut(i, &s)
		}
		out = append(out, s.Bytes())
		seq += uint32(len(s.Payload))
	}
	return out
}

func TestMergeRules(t *testing.T) {
	mss := []int{1448}
	at := func(k int, f func(s *testpacket.TCP)) func(int, *testpacket.TCP) {
		return func(i int, s *testpacket.TCP) {
			if i == k {
				f(s)
			}
		}
	}
	setFlags := func(k int, fl header.TCPFlags) func(int, *testpacket.TCP) {
		return at(k, func(s *testpacket.TCP) { s.Flags = header.TCPFlagAck | fl })
	}
	tests := []struct {
		name   string
		cfg    Config
		v4only bool
		tmpl   testpacket.TCP
		sizes  []int
		n      int
		mut    func(i int, s *testpacket.TCP)
		want   []int
	}{
		{name: "in order merges", sizes: mss, n: 4, want: []int{4}},
		{name: "timestamps merge", tmpl: testpacket.TCP{TS: true, TSVal: 7, TSEcr: 9}, sizes: mss, n: 4, want: []int{4}},
		{name: "odd payload lengths", sizes: []int{1001, 999, 3, 1, 7}, n: 5, want: []int{5}},
		{name: "one byte segments", sizes: []int{1}, n: 9, want: []int{9}},
		{name: "PSH aggregated", sizes: mss, n: 4, mut: setFlags(1, header.TCPFlagPsh), want: []int{4}},
		{name: "newer ACK and any window merge", sizes: mss, n: 3,
			mut: func(i int, s *testpacket.TCP) { s.Ack = uint32(100 * i); s.Window = uint16(1000 - i) }, want: []int{3}},
		{name: "older ACK restarts", tmpl: testpacket.TCP{Ack: 1000}, sizes: mss, n: 3,
			mut: at(1, func(s *testpacket.TCP) { s.Ack = 999 }), want: []int{1, 2}},
		{name: "ACK wraps", tmpl: testpacket.TCP{Ack: 0xfffffff0}, sizes: mss, n: 3,
			mut: at(2, func(s *testpacket.TCP) { s.Ack = 0x10 }), want: []int{3}},
		{name: "newer or equal TSval merges across wrap", tmpl: testpacket.TCP{TS: true}, sizes: mss, n: 4,
			mut: func(i int, s *testpacket.TCP) { s.TSVal = 0xfffffffe + uint32(i/2) }, want: []int{4}},
		{name: "older TSval flushes", tmpl: testpacket.TCP{TS: true, TSVal: 100}, sizes: mss, n: 3,
			mut: at(2, func(s *testpacket.TCP) { s.TSVal = 99 }), want: []int{2, 1}},
		{name: "pure ACK passes after flush", sizes: []int{1448, 1448, 0, 1448}, n: 4, want: []int{2, 1, 1}},
		{name: "FIN passes", sizes: mss, n: 3, mut: setFlags(2, header.TCPFlagFin), want: []int{2, 1}},
		{name: "SYN passes", sizes: mss, n: 2, mut: setFlags(0, header.TCPFlagSyn), want: []int{1, 1}},
		{name: "RST passes", sizes: mss, n: 3, mut: setFlags(1, header.TCPFlagRst), want: []int{1, 1, 1}},
		{name: "URG passes", sizes: mss, n: 3, mut: setFlags(1, header.TCPFlagUrg), want: []int{1, 1, 1}},
		{name: "ECE passes", sizes: mss, n: 3, mut: setFlags(2, header.TCPFlagEce), want: []int{2, 1}},
		{name: "CWR ends a run", sizes: mss, n: 4, mut: setFlags(2, header.TCPFlagCwr), want: []int{2, 1, 1}},
		{name: "no ACK passes", sizes: mss, n: 2, mut: at(1, func(s *testpacket.TCP) { s.Flags = header.TCPFlagPsh }), want: []int{1, 1}},
		{name: "CE mark passes", sizes: mss, n: 3, mut: at(1, func(s *testpacket.TCP) { s.TOS = 0x03 }), want: []int{1, 1, 1}},
		{name: "TOS change restarts", sizes: mss, n: 4, mut: func(i int, s *testpacket.TCP) { s.TOS = uint8(i/2) << 2 }, want: []int{2, 2}},
		{name: "TTL change restarts", sizes: mss, n: 3, mut: at(2, func(s *testpacket.TCP) { s.TTL = 63 }), want: []int{2, 1}},
		{name: "timestamp appears restarts", sizes: mss, n: 3, mut: at(2, func(s *testpacket.TCP) { s.TS = true }), want: []int{2, 1}},
		{name: "SACK option passes", sizes: mss, n: 3,
			mut: at(1, func(s *testpacket.TCP) { s.Options = []byte{1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2} }), want: []int{1, 1, 1}},
		{name: "timestamp without NOPs passes", sizes: mss, n: 2,
			mut: at(1, func(s *testpacket.TCP) { s.Options = []byte{8, 10, 0, 0, 0, 1, 0, 0, 0, 2, 1, 1} }), want: []int{1, 1}},
		{name: "gap passes", sizes: mss, n: 4,
			mut: func(i int, s *testpacket.TCP) {
				if i >= 2 {
					s.Seq += 1448
				}
			}, want: []int{2, 1, 1}},
		{name: "retransmission passes", sizes: mss, n: 4,
			mut: at(2, func(s *testpacket.TCP) { s.Seq -= 1448 }), want: []int{2, 1, 1}},
		{name: "padding passes", sizes: mss, n: 3, mut: at(1, func(s *testpacket.TCP) { s.Padding = 6 }), want: []int{1, 1, 1}},
		{name: "IPv4 options pass", v4only: true, sizes: mss, n: 3,
			mut: at(1, func(s *testpacket.TCP) { s.IPOptions = []byte{1, 1, 1, 0} }), want: []int{1, 1, 1}},
		{name: "IPv4 fragment passes", v4only: true, sizes: mss, n: 2,
			mut: at(1, func(s *testpacket.TCP) { s.MoreFragments = true }), want: []int{1, 1}},
		{name: "MaxSegments", cfg: Config{MaxSegments: 3}, sizes: mss, n: 7, want: []int{3, 3, 1}},
		{name: "MaxSegments 1 merges nothing", cfg: Config{MaxSegments: 1}, sizes: mss, n: 3, want: []int{1, 1, 1}},
		{name: "MaxBytes", cfg: Config{MaxBytes: 3000}, sizes: mss, n: 5, want: []int{2, 2, 1}},
		{name: "never over 65535 bytes", cfg: Config{MaxSegments: 100}, tmpl: testpacket.TCP{TS: true}, sizes: mss, n: 64, want: []int{45, 19}},
		{name: "resegmentable: equal sizes merge", cfg: Config{Resegmentable: true}, sizes: mss, n: 4, want: []int{4}},
		{name: "resegmentable: short segment ends the run", cfg: Config{Resegmentable: true}, sizes: []int{1448, 1448, 1000, 1448}, n: 4, want: []int{3, 1}},
		{name: "resegmentable: larger segment restarts", cfg: Config{Resegmentable: true}, sizes: []int{1000, 1448, 1448}, n: 3, want: []int{1, 2}},
		{name: "resegmentable: PSH ends the run", cfg: Config{Resegmentable: true}, sizes: mss, n: 4, mut: setFlags(1, header.TCPFlagPsh), want: []int{2, 2}},
		{name: "resegmentable: window change restarts", cfg: Config{Resegmentable: true}, sizes: mss, n: 3,
			mut: at(1, func(s *testpacket.TCP) { s.Window = 1 }), want: []int{1, 1, 1}},
		{name: "resegmentable: ACK change restarts", cfg: Config{Resegmentable: true}, sizes: mss, n: 3,
			mut: func(i int, s *testpacket.TCP) { s.Ack = uint32(i / 2) }, want: []int{2, 1}},
		{name: "resegmentable: TSval change restarts", cfg: Config{Resegmentable: true}, tmpl: testpacket.TCP{TS: true}, sizes: mss, n: 3,
			mut: func(i int, s *testpacket.TCP) { s.TSVal = uint32(i) }, want: []int{1, 1, 1}},
	}
	for _, tt := range tests {
		for _, v6 := range []bool{false, true} {
			if v6 && tt.v4only {
				continue
			}
			for _, p := range paths {
				t.Run(fmt.Sprintf("%s/v6=%v/%s", tt.name, v6, p), func(t *testing.T) {
					tmpl := tt.tmpl
					tmpl.V6 = v6
					tmpl.Seq = 0x7fffff00 // sequence numbers wrap inside some rows
					in := stream(tmpl, tt.sizes, tt.n, tt.mut)
					rec := &recorder{}
					e := newEngine(t, rec, tt.cfg)
					for _, b := range in {
						feed(e, p, b)
					}
					e.Flush()
					out := rec.take()
					requirePartition(t, in, out, tt.want)
					st := e.Stats()
					assert.Equal(t, uint64(len(in)), st.PacketsIn)
					assert.Equal(t, uint64(len(out)), st.PacketsOut)
					assert.Zero(t, st.Held())
				})
			}
		}
	}
}

// TestMergedHeaders checks what the merged header carries under inet_lro
// rules: newest ACK, window and timestamps, PSH from any segment.
func TestMergedHeaders(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			in := stream(testpacket.TCP{V6: v6, TS: true}, []int{100, 101}, 4, func(i int, s *testpacket.TCP) {
				s.Ack, s.Window, s.TSVal, s.TSEcr = uint32(10+i), uint16(500+i), uint32(20+i), uint32(30+i)
				if i == 1 {
					s.Flags = header.TCPFlagAck | header.TCPFlagPsh
				}
			})
			rec := &recorder{}
			e := newEngine(t, rec, Config{})
			for _, b := range in {
				feed(e, viaPacket, b)
			}
			e.Flush()
			out := rec.take()
			require.Equal(t, 1, len(out))
			tcp, payload, err := testpacket.Check(out[0].data)
			require.NoError(t, err)
			assert.Equal(t, 402, len(payload))
			assert.Equal(t, uint32(13), tcp.AckNumber())
			assert.Equal(t, uint16(503), tcp.WindowSize())
			assert.Equal(t, header.TCPFlagAck|header.TCPFlagPsh, tcp.Flags())
			ts := tcp.ParsedOptions()
			assert.True(t, ts.TS)
			assert.Equal(t, uint32(23), ts.TSVal)
			assert.Equal(t, uint32(33), ts.TSEcr)
			st := e.Stats()
			assert.Equal(t, uint64(3), st.SegmentsMerged)
			assert.Equal(t, uint64(1), st.MergedPackets)
			assert.Equal(t, uint64(1), st.FlushBatch)
		})
	}
}

// TestBadChecksumNeverMerges corrupts one segment in flight (payload byte
// flipped, checksums left alone): it must reach netstack unchanged and
// alone, cost nothing held, and the good segments around it stay intact.
func TestBadChecksumNeverMerges(t *testing.T) {
	corrupt := []struct {
		name string
		f    func(b []byte, v6 bool)
	}{
		{"payload byte", func(b []byte, _ bool) { b[len(b)-1] ^= 0x40 }},
		{"TCP checksum", func(b []byte, v6 bool) { b[ipLen(b)+16] ^= 1 }},
		{"IPv4 header checksum", func(b []byte, v6 bool) {
			if !v6 {
				b[10] ^= 1
			} else {
				b[len(b)-2] ^= 1
			}
		}},
	}
	for _, c := range corrupt {
		for _, v6 := range []bool{false, true} {
			for _, p := range paths {
				t.Run(fmt.Sprintf("%s/v6=%v/%s", c.name, v6, p), func(t *testing.T) {
					in := stream(testpacket.TCP{V6: v6}, []int{1001}, 4, nil)
					bad := append([]byte(nil), in[1]...)
					c.f(bad, v6)
					rec := &recorder{}
					e := newEngine(t, rec, Config{})
					feed(e, p, in[0])
					feed(e, p, bad)
					assert.Equal(t, uint64(1), e.Stats().Held(), "bad input costs no held packet")
					feed(e, p, in[1]) // the retransmission
					feed(e, p, in[2])
					feed(e, p, in[3])
					e.Flush()
					out := rec.take()
					require.Equal(t, 2, len(out))
					assert.Equal(t, bad, out[0].data, "the bad segment passes unchanged")
					requirePartition(t, in, out[1:], []int{4})
					assert.Equal(t, uint64(1), e.Stats().PassBadChecksum)
				})
			}
		}
	}
}

// TestChecksumOffsets merges payloads of every length parity so that
// segment sums land at odd and even offsets of the merged payload.
func TestChecksumOffsets(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for a := 1; a <= 4; a++ {
			for b := 1; b <= 4; b++ {
				in := stream(testpacket.TCP{V6: v6}, []int{a, b, 3, a + b}, 8, nil)
				rec := &recorder{}
				e := newEngine(t, rec, Config{})
				for _, x := range in {
					feed(e, viaPacket, x)
				}
				e.Flush()
				requirePartition(t, in, rec.take(), []int{8})
			}
		}
	}
}

// TestValidatedByLowerEndpoint: a lower endpoint that validated checksums
// is trusted, by the packet flag or, for fragments, by
// Config.TrustChecksums, even when the sender's offload left only the pseudo-header
// sum in the TCP checksum field (Linux CHECKSUM_PARTIAL); the merged
// packet still carries a correct checksum.
func TestValidatedByLowerEndpoint(t *testing.T) {
	partial := func(b []byte) []byte {
		c := append([]byte(nil), b...)
		l := ipLen(c)
		tcp := header.TCP(c[l:])
		src, dst := header.IPv4(c).SourceAddress(), header.IPv4(c).DestinationAddress()
		if c[0]>>4 == 6 {
			src, dst = header.IPv6(c).SourceAddress(), header.IPv6(c).DestinationAddress()
		}
		tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp))))
		return c
	}
	for _, v6 := range []bool{false, true} {
		for _, p := range paths {
			t.Run(fmt.Sprintf("v6=%v/%s", v6, p), func(t *testing.T) {
				in := stream(testpacket.TCP{V6: v6, TS: true}, []int{1447, 1448}, 5, nil)
				rec := &recorder{}
				e := newEngine(t, rec, Config{TrustChecksums: p != viaPacket})
				for _, b := range in {
					b = partial(b)
					if p != viaPacket {
						feed(e, p, b)
						continue
					}
					pkt := testpacket.NewPacket(b)
					pkt.RXChecksumValidated = true
					e.DeliverNetworkPacket(testpacket.Proto(b), pkt)
					pkt.DecRef()
				}
				e.Flush()
				out := rec.take()
				require.Equal(t, 1, len(out))
				_, payload, err := testpacket.Check(out[0].data)
				require.NoError(t, err, "the merged checksum is real")
				assert.Equal(t, 1447*3+1448*2, len(payload))
			})
		}
	}
}

func TestConfig(t *testing.T) {
	for _, cfg := range []Config{{MaxFlows: -1}, {MaxSegments: -1}, {MaxBytes: -1}, {Shards: -1}, {MaxFlows: 2, Shards: 4}} {
		_, err := New(discard{}, cfg)
		require.ErrorIs(t, err, ErrInvalidConfig, "%+v", cfg)
	}
	_, err := New(nil, Config{})
	require.ErrorIs(t, err, ErrInvalidConfig)
	e, err := New(discard{}, Config{})
	require.NoError(t, err)
	assert.Equal(t, DefaultMaxFlows, e.own.cfg.MaxFlows)
	assert.Equal(t, DefaultMaxSegments, e.own.cfg.MaxSegments)
	assert.Equal(t, DefaultFlushDelay, e.own.cfg.FlushDelay)
	e.Close()
}
