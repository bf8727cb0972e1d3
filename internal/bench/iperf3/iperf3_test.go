package iperf3

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/internal/bench/cputime"
)

// clientReport is the part of iperf3 -J's output the tests read.
type clientReport struct {
	Error string `json:"error"`
	End   struct {
		SumSent     struct{ Bytes int64 } `json:"sum_sent"`
		SumReceived struct{ Bytes int64 } `json:"sum_received"`
		Streams     []json.RawMessage     `json:"streams"`
	} `json:"end"`
}

// TestRealClientLoopback runs the real iperf3 client against the server
// on the loopback address, forward and reverse, with parallel streams.
func TestRealClientLoopback(t *testing.T) {
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install iperf3)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port

	var (
		mu    sync.Mutex
		tests []Test
	)
	srv := NewServer(Options{
		Logf:      t.Logf,
		CPUTime:   cputime.Process,
		OnTestEnd: func(r Test) { mu.Lock(); tests = append(tests, r); mu.Unlock() },
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	defer func() {
		cancel()
		assert.ErrorIs(t, <-done, context.Canceled)
	}()

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"forward", []string{"-t", "1"}},
		{"reverse", []string{"-t", "1", "-R"}},
		{"parallel", []string{"-t", "1", "-P", "3"}},
		{"reverse parallel bytes", []string{"-n", "8M", "-R", "-P", "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			args := append([]string{"-c", "127.0.0.1", "-p", strconv.Itoa(port), "-J"}, tc.args...)
			out, err := exec.CommandContext(ctx, bin, args...).Output()
			var rep clientReport
			require.NoError(t, json.Unmarshal(out, &rep), "iperf3 -J output: %s", out)
			require.NoError(t, err, "iperf3: %s", rep.Error)
			assert.Empty(t, rep.Error)
			assert.Positive(t, rep.End.SumReceived.Bytes)
			assert.Positive(t, rep.End.SumSent.Bytes)
		})
	}
	// The client exits once it has the results; the server ends the test
	// when IPERF_DONE arrives, a moment later.
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(tests) == 4
	}, 10*time.Second, 10*time.Millisecond, "tests the server completed")
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, 3, tests[2].Streams)
	assert.True(t, tests[3].Reverse)
	assert.GreaterOrEqual(t, tests[3].Bytes, int64(8<<20))
}

// TestRefusesUDP checks that a UDP test gets iperf3's "not implemented"
// error instead of a hang.
func TestRefusesUDP(t *testing.T) {
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install iperf3)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- NewServer(Options{Logf: t.Logf}).Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()

	cctx, ccancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer ccancel()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	out, err := exec.CommandContext(cctx, bin, "-c", "127.0.0.1", "-p", port, "-u", "-t", "1", "-J").Output()
	t.Logf("iperf3 exit status: %v", err) // 3.12 exits 0 after a server error with -J
	var rep clientReport
	require.NoError(t, json.Unmarshal(out, &rep), "iperf3 -J output: %s", out)
	assert.Contains(t, rep.Error, "not implemented")
}
