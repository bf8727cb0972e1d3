package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/internal/bench/iperf"
	"github.com/netlro/netlro/lro"
)

// TestTableRatios checks that every row after the netstack row carries
// its bitrate and CPU per GB divided by netstack's, that a row before it
// or a table without it shows none, and that the legends follow.
func TestTableRatios(t *testing.T) {
	netstack := iperf.Result{Mode: iperf.ModeNetstack, Bytes: 1e9, Seconds: 8, CPUSeconds: 8, Verified: true}
	netlro := iperf.Result{Mode: iperf.ModeNetlro, Bytes: 1e9, Seconds: 4, CPUSeconds: 2, Verified: true,
		LRO: &lro.Stats{PacketsIn: 30, PacketsOut: 1, SegmentsMerged: 29, MergedPackets: 1, FlushBatch: 1}}
	for _, tc := range []struct {
		name string
		rows []iperf.Result
		want map[iperf.Mode][2]string // rate x, CPU x
	}{
		{"netstack first", []iperf.Result{netstack, netlro},
			map[iperf.Mode][2]string{iperf.ModeNetstack: {"1.00x", "1.00x"}, iperf.ModeNetlro: {"2.00x", "0.25x"}}},
		{"no netstack row", []iperf.Result{netlro},
			map[iperf.Mode][2]string{iperf.ModeNetlro: {"-", "-"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			tab := newTable(&out, false)
			tab.header("test")
			for _, r := range tc.rows {
				tab.row(r)
			}
			require.NoError(t, tab.finish(tc.rows))
			got := map[iperf.Mode][2]string{}
			for line := range strings.Lines(out.String()) {
				f := strings.Fields(line)
				if len(f) > 3 && f[len(f)-1] == "yes" { // a row: ..., rate x, CPU x, SHA-256
					got[iperf.Mode(f[0])] = [2]string{f[len(f)-3], f[len(f)-2]}
				}
			}
			assert.Equal(t, tc.want, got, out.String())
			assert.Contains(t, out.String(), "CPU x is the steady figure")
			assert.Contains(t, out.String(), "Engine counters of each netlro row")
			assert.Contains(t, out.String(), "netlro engine: in 30 out 1")
		})
	}
}
