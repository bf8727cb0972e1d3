package main

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSoak runs a short soak, two cycles of 1.5 s with two streams each
// way over the mixed link, and checks its JSON lines: nothing wrong or
// failed, no hang, and the summary the sum of its cycles.
func TestSoak(t *testing.T) {
	code, out, errOut := runArgs(t, "-soak", "3s", "-soak-cycle", "1500ms", "-streams", "2", "-soak-stream", "256K", "-json")
	var (
		cycles []soakCycle
		stalls []soakStall
		sum    *soakSummary
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var kind struct{ Type string }
		require.NoError(t, json.Unmarshal(sc.Bytes(), &kind), sc.Text())
		switch kind.Type {
		case "cycle":
			var c soakCycle
			require.NoError(t, json.Unmarshal(sc.Bytes(), &c))
			cycles = append(cycles, c)
		case "stall":
			var s soakStall
			require.NoError(t, json.Unmarshal(sc.Bytes(), &s))
			stalls = append(stalls, s)
		case "summary":
			sum = new(soakSummary)
			require.NoError(t, json.Unmarshal(sc.Bytes(), sum))
		default:
			t.Fatalf("line of type %q: %s", kind.Type, sc.Text())
		}
	}
	require.NotNil(t, sum, "no summary; stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Empty(t, sum.Hang, "teardown hang (the known Stack.Destroy deadlock)")
	require.Equal(t, 0, code, "failures %q; stderr:\n%s", sum.Failures, errOut)

	assert.GreaterOrEqual(t, sum.Cycles, 2)
	assert.Len(t, cycles, sum.Cycles)
	assert.Len(t, stalls, sum.Stalls)
	assert.Zero(t, sum.BytesWrong)
	assert.Zero(t, sum.Wrong)
	assert.Zero(t, sum.Failed)
	assert.Positive(t, sum.Completed)
	assert.Equal(t, sum.Started, sum.Completed+sum.Cut+sum.Wrong+sum.Failed)
	assert.LessOrEqual(t, sum.BytesVerified, sum.BytesMoved)
	var moved, verified int64
	var started, completed int
	for _, c := range cycles {
		assert.Positive(t, c.ForwardBytes, "cycle %d forward", c.Cycle)
		assert.Positive(t, c.ReverseBytes, "cycle %d reverse", c.Cycle)
		moved += c.Bytes()
		verified += c.VerifiedBytes
		started += c.Started
		completed += c.Completed
	}
	assert.Equal(t, moved, sum.BytesMoved)
	assert.Equal(t, verified, sum.BytesVerified)
	assert.Equal(t, started, sum.Started)
	assert.Equal(t, completed, sum.Completed)
	assert.Positive(t, sum.Pump.Dropped+sum.Pump.Corrupted, "the mixed profile impaired the link")
	assert.Positive(t, sum.End.Goroutines)
	assert.Positive(t, sum.End.RSS)
}
