package lro

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// TestIPv6Extensions: IPv6 segments with Hop-by-Hop, Routing or
// Destination Options headers merge, in both modes, when those headers are
// byte-identical (Linux ipv6_gro_receive, gVisor findGROPacket6); the
// merged packet carries them once, with a payload length and TCP checksum
// netstack accepts. Anything else passes in order.
func TestIPv6Extensions(t *testing.T) {
	dst := func(b ...byte) testpacket.IPv6Ext {
		return testpacket.IPv6Ext{Type: testpacket.IPv6DestOptions, Body: append([]byte{0x1e, 4}, b...)}
	}
	hbh := testpacket.IPv6Ext{Type: testpacket.IPv6HopByHop, Body: []byte{5, 2, 0, 0, 1, 0}}
	route := func(left byte) testpacket.IPv6Ext {
		return testpacket.IPv6Ext{Type: testpacket.IPv6Routing, Body: []byte{0, left, 0, 0, 0, 0}}
	}
	frag := testpacket.IPv6Ext{Type: testpacket.IPv6Fragment, Body: make([]byte, 6)}
	same := func(x ...testpacket.IPv6Ext) func(int, *testpacket.TCP) {
		return func(_ int, s *testpacket.TCP) { s.IPv6Ext = x }
	}
	tests := []struct {
		name string
		cfg  Config
		n    int
		mut  func(i int, s *testpacket.TCP)
		want []int // payload segments per packet out
	}{
		{name: "identical destination options merge", n: 4, mut: same(dst(1, 2, 3, 4)), want: []int{4}},
		{name: "hop-by-hop, routing and destination options merge", n: 3, mut: same(hbh, route(0), dst(0, 0, 0, 0, 0, 0, 0, 0)), want: []int{3}},
		{name: "a changed option byte restarts", n: 4, mut: func(i int, s *testpacket.TCP) { s.IPv6Ext = []testpacket.IPv6Ext{dst(0, 0, 0, byte(i/2))} }, want: []int{2, 2}},
		{name: "same bytes under another type restart", n: 4, mut: func(i int, s *testpacket.TCP) {
			x := dst(0, 0, 0, 0)
			if i >= 2 {
				x.Type = testpacket.IPv6HopByHop
			}
			s.IPv6Ext = []testpacket.IPv6Ext{x}
		}, want: []int{2, 2}},
		{name: "headers appear restarts", n: 4, mut: func(i int, s *testpacket.TCP) {
			if i >= 1 {
				s.IPv6Ext = []testpacket.IPv6Ext{dst(0, 0, 0, 0)}
			}
		}, want: []int{1, 3}},
		{name: "routing with segments left passes", n: 3, mut: same(route(1)), want: []int{1, 1, 1}},
		{name: "fragment header passes after the held packet", n: 4, mut: func(i int, s *testpacket.TCP) {
			if i == 2 {
				s.IPv6Ext = []testpacket.IPv6Ext{frag}
			}
		}, want: []int{2, 1, 1}},
		{name: "more than 8 headers pass", n: 2, mut: same(dst(), dst(), dst(), dst(), dst(), dst(), dst(), dst(), dst()), want: []int{1, 1}},
		{name: "65535 bytes with the headers", cfg: Config{MaxSegments: 100}, n: 50,
			mut: same(hbh, dst(make([]byte, 12)...)), want: []int{45, 5}},
	}
	for _, tt := range tests {
		for _, reseg := range []bool{false, true} {
			for _, p := range paths {
				t.Run(fmt.Sprintf("%s/resegmentable=%v/%s", tt.name, reseg, p), func(t *testing.T) {
					in := stream(testpacket.TCP{V6: true, TS: true}, []int{1448}, tt.n, tt.mut)
					cfg := tt.cfg
					cfg.Resegmentable = reseg
					rec := &recorder{}
					e := newEngine(t, rec, cfg)
					for _, b := range in {
						feed(e, p, b)
					}
					e.Flush()
					out := packetsOf(rec.take())
					got := []int{}
					i := 0
					for _, o := range out {
						require.LessOrEqual(t, len(o), 0xffff)
						if bytes.Equal(o, in[i]) {
							got = append(got, 1)
							i++
							continue
						}
						_, payload, err := testpacket.Check(o)
						require.NoError(t, err, "a merged packet is valid")
						l := testpacket.IPHeaderLen(o)
						require.Equal(t, in[i][:4], o[:4]) // version, traffic class, flow label
						// The extension headers are the first segment's.
						assert.Equal(t, in[i][header.IPv6MinimumSize:l], o[header.IPv6MinimumSize:l])
						n, want := 0, []byte{}
						for ; len(want) < len(payload) && i+n < len(in); n++ {
							_, p, err := testpacket.Check(in[i+n])
							require.NoError(t, err)
							want = append(want, p...)
						}
						require.Equal(t, want, payload)
						got = append(got, n)
						i += n
					}
					assert.Equal(t, tt.want, got)
					if reseg {
						require.NoError(t, checkResegmentable(in, out))
					}
				})
			}
		}
	}
}
