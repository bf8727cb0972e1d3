package tests

import (
	"context"
	"encoding/json"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/internal/bench/cputime"
	"github.com/netlro/netlro/internal/bench/iperf"
	"github.com/netlro/netlro/internal/bench/iperf3"
)

// iperf3Report is the part of iperf3 -J's output the test reads.
type iperf3Report struct {
	Error string `json:"error"`
	End   struct {
		SumSent     struct{ Bytes int64 } `json:"sum_sent"`
		SumReceived struct{ Bytes int64 } `json:"sum_received"`
	} `json:"end"`
}

// TestIperf3ClientTAP runs the real iperf3 client in a network namespace
// the test creates against netstack-server's iperf3 server: netstack with
// netlro on the namespace's TAP device, forward, reverse and parallel,
// over IPv4 and IPv6.
func TestIperf3ClientTAP(t *testing.T) {
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install iperf3)")
	}
	ns := newTestNamespace(t)
	link := iperf.LinkOptions{FD: ns.FD, MTU: iperf.DefaultMTU, EthernetHeader: true, Address: tapMAC}
	rs, err := iperf.NewReceiverStack(iperf.ModeNetlro, link, nil, iperf.ReceiverAddr4, iperf.ReceiverAddr6)
	require.NoError(t, err)
	defer rs.Destroy()

	var (
		mu    sync.Mutex
		tests []iperf3.Test
	)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, addr := range []tcpip.Address{iperf.ReceiverAddr4, iperf.ReceiverAddr6} {
		ln, err := iperf.ListenTCP(rs.Stack, addr, iperf.Port, 0)
		require.NoError(t, err)
		srv := iperf3.NewServer(iperf3.Options{
			Logf:      t.Logf,
			CPUTime:   cputime.Process,
			OnTestEnd: func(r iperf3.Test) { mu.Lock(); tests = append(tests, r); mu.Unlock() },
		})
		wg.Go(func() { assert.ErrorIs(t, srv.Serve(ctx, ln), context.Canceled) })
	}

	for _, tc := range []struct {
		name string
		args []string
	}{
		{"ipv4 forward", []string{"-c", iperf.ReceiverAddr4.String(), "-t", "1"}},
		{"ipv4 reverse parallel", []string{"-c", iperf.ReceiverAddr4.String(), "-t", "1", "-R", "-P", "2"}},
		{"ipv6 forward parallel", []string{"-c", iperf.ReceiverAddr6.String(), "-t", "1", "-P", "2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer ccancel()
			out, err := ns.Command(cctx, bin, append(tc.args, "-J")...).Output()
			var rep iperf3Report
			require.NoError(t, json.Unmarshal(out, &rep), "iperf3 -J output: %s", out)
			require.NoError(t, err, "iperf3: %s", rep.Error)
			require.Empty(t, rep.Error)
			assert.Positive(t, rep.End.SumReceived.Bytes)
			t.Logf("iperf3: sent %d, received %d bytes", rep.End.SumSent.Bytes, rep.End.SumReceived.Bytes)
		})
	}
	// The client exits once it has the results; the server ends the test
	// when IPERF_DONE arrives, a moment later.
	assert.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(tests) == 3
	}, 10*time.Second, 10*time.Millisecond, "tests the server completed")
	st, ok := rs.Link.LROStats()
	require.True(t, ok)
	t.Logf("lro: %s", st)
	assert.NotZero(t, st.MergedPackets, "the kernel's segments merged")
}
