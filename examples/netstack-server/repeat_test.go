package main

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/internal/bench/iperf"
)

// TestSummarize: the median, the spread, and the runs below a quarter of
// the median, which are the stalls.
func TestSummarize(t *testing.T) {
	res := func(gbps float64, verified bool) iperf.Result {
		return iperf.Result{Bytes: int64(gbps * 1e9 / 8), Seconds: 1, Verified: verified}
	}
	s := summarize([]iperf.Result{res(2, true), res(2.4, true), res(0.4, true), res(2.2, false), res(0.6, true)})
	assert.InDelta(t, 2.0, s.median, 1e-9)
	assert.InDelta(t, 0.4, s.min, 1e-9)
	assert.InDelta(t, 2.4, s.max, 1e-9)
	assert.Equal(t, 1, s.wrong)
	require.Len(t, s.stalls, 1, "0.6 is not below 2.0/4")
	assert.Equal(t, 3, s.stalls[0].run)
	assert.Empty(t, summarize(nil).stalls)
}

// TestRepeat: -repeat runs the row that many times and prints its summary.
func TestRepeat(t *testing.T) {
	code, stdout, stderr := runArgs(t, "-repeat", "2", "-time", "100ms", "-mode", "netlro")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "run 2/2:")
	assert.Regexp(t, `(?m)^netlro\s+2\s`, stdout)
}
