package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/internal/bench/iperf"
	"github.com/netlro/netlro/internal/bench/tapns"
)

// TestTapTable runs two rows of -tap: the kernel's TCP sending from a
// namespace the program creates and removes.
func TestTapTable(t *testing.T) {
	if err := tapns.Check(); err != nil {
		t.Skipf("skipping: -tap: %v", err)
	}
	for _, row := range []struct {
		mode, cc string
		tso      bool
	}{{"fdbased", "", false}, {"netlro", "reno", false}, {"netlro", "", true}} {
		args := []string{"-tap", "-bytes", "4M", "-mode", row.mode, "-json"}
		wantCC := "cubic" // the default, whatever the machine's sysctl says
		if row.cc != "" {
			args, wantCC = append(args, "-cc", row.cc), row.cc
		}
		if row.tso {
			args = append(args, "-tso")
		}
		code, out, errOut := runArgs(t, args...)
		require.Equal(t, 0, code, "stderr: %s", errOut)
		var rep jsonReport
		require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
		require.Len(t, rep.Results, 1)
		assert.Contains(t, rep.Description, "Linux kernel's TCP ("+wantCC+")")
		assert.True(t, rep.Results[0].Verified)
		assert.Equal(t, int64(4<<20), rep.Results[0].Bytes)
		assert.Positive(t, rep.Results[0].Sent.CPUSeconds, "the kernel sender's process reports its CPU time")
		require.NotNil(t, rep.Results[0].FD)
		if row.tso {
			assert.Positive(t, rep.Results[0].FD.GSOFrames, "the kernel sent TCP super-packets")
		} else {
			assert.Zero(t, rep.Results[0].FD.GSOFrames)
		}
		// Other packages' tests make namespaces of their own at the same
		// time: check only the one this run says it made.
		ns := regexp.MustCompile(`network namespace (\S+)`).FindStringSubmatch(rep.Description)
		require.NotNil(t, ns, "the description names the namespace: %q", rep.Description)
		assert.NotContains(t, namespaces(t), ns[1], "namespace left behind")
	}
}

// A congestion control the kernel does not have is a usage error, before
// anything runs, rather than a default quietly measured.
func TestTapUnknownCongestionControl(t *testing.T) {
	if err := tapns.Check(); err != nil {
		t.Skipf("skipping: -tap: %v", err)
	}
	code, _, errOut := runArgs(t, "-tap", "-bytes", "1M", "-mode", "fdbased", "-cc", "no-such-cc")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, errOut, "-cc no-such-cc: not available")
}

// namespaces lists the named network namespaces.
func namespaces(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestListenIperf3 runs the program's -listen server inside a namespace
// the test creates, on a TAP device there, and the real iperf3 client
// against it, forward and reverse; also with -tso, where the kernel's
// TCP sends super-packets through the TAP device.
func TestListenIperf3(t *testing.T) {
	if err := tapns.Check(); err != nil {
		t.Skipf("skipping: -listen on a TAP device in a namespace: %v", err)
	}
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install iperf3)")
	}
	for i, tso := range []bool{false, true} {
		name := "plain"
		if tso {
			name = "tso"
		}
		t.Run(name, func(t *testing.T) { testListenIperf3(t, bin, i, tso) })
	}
}

func testListenIperf3(t *testing.T, bin string, seq int, tso bool) {
	a4 := iperf.SenderAddr4.As4()
	ns, err := tapns.New(t.Context(), tapns.Config{
		Name:       "netlro-listen-" + strconv.Itoa(os.Getpid()) + "-" + strconv.Itoa(seq),
		IfName:     "nss0",
		Persistent: true,
		Addrs:      []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4(a4), 24)},
	})
	require.NoError(t, err)
	defer func() { assert.NoError(t, ns.Close()) }()

	exe, err := os.Executable()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	addr := iperf.ReceiverAddr4.String()
	args := []string{"-listen", addr + ":5201", "-tap-name", "nss0"}
	if tso {
		args = append(args, "-tso")
	}
	server := ns.Command(ctx, exe, args...)
	server.Env = append(os.Environ(), runMainEnv+"=1")
	stdout, err := server.StdoutPipe()
	require.NoError(t, err)
	server.Stderr = os.Stderr
	require.NoError(t, server.Start())
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		for sc := bufio.NewScanner(stdout); sc.Scan(); {
			lines <- sc.Text()
		}
	}()
	// The server says when it listens.
	var out []string
	for line := range lines {
		out = append(out, line)
		if strings.HasPrefix(line, "run: iperf3 -c") {
			break
		}
	}
	require.NotEmpty(t, out)
	require.True(t, strings.HasPrefix(out[len(out)-1], "run: iperf3 -c"), "server output: %q", out)

	for _, args := range [][]string{{"-t", "1"}, {"-t", "1", "-R", "-P", "2"}} {
		cmd := ns.Command(ctx, bin, append([]string{"-c", addr, "-J"}, args...)...)
		res, err := cmd.Output()
		require.NoError(t, err, "iperf3 %v: %s", args, res)
		var rep struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct{ Bytes int64 } `json:"sum_received"`
			} `json:"end"`
		}
		require.NoError(t, json.Unmarshal(res, &rep))
		assert.Empty(t, rep.Error)
		assert.Positive(t, rep.End.SumReceived.Bytes)
	}

	require.NoError(t, server.Process.Signal(os.Interrupt))
	for line := range lines {
		out = append(out, line)
	}
	require.NoError(t, server.Wait(), "a server stopped by Ctrl-C exits 0")
	all := strings.Join(out, "\n")
	assert.Equal(t, 2, strings.Count(all, "test from "), all)
	assert.Contains(t, all, "netstack to client (-R), 2 stream(s)")
	assert.Contains(t, all, "netlro since start: in ")
	if tso {
		assert.NotContains(t, all, ", 0 TCP super-packets", "the kernel sent super-packets")
	} else {
		assert.Contains(t, all, ", 0 TCP super-packets")
	}
}
