package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/refs"

	"github.com/netlro/netlro/internal/bench/iperf"
)

// runMainEnv makes the test binary run main's run with its arguments
// instead of the tests: how TestTapNeedsRoot runs the program as another
// user.
const runMainEnv = "NETSTACK_SERVER_TEST_RUN_MAIN"

// TestMain lets the test binary stand in for the program: the rows'
// sending child is this binary started with -internal-sender.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-"+senderFlag {
		os.Exit(runSenderChild())
	}
	if os.Getenv(runMainEnv) != "" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// runArgs runs the program with args and returns its exit code and output.
func runArgs(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// jsonReport is what -json prints.
type jsonReport struct {
	Description string         `json:"description"`
	Results     []iperf.Result `json:"results"`
}

// TestEveryRowJSON runs every row with a small fixed amount and checks the
// JSON results: each row verified, the netlro rows merged.
func TestEveryRowJSON(t *testing.T) {
	code, out, errOut := runArgs(t, "-bytes", "2M", "-json")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	var rep jsonReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.Len(t, rep.Results, len(iperf.Modes))
	for i, r := range rep.Results {
		assert.Equal(t, iperf.Modes[i], r.Mode)
		assert.Equal(t, int64(2<<20), r.Bytes, "%s bytes", r.Mode)
		assert.True(t, r.Verified, "%s SHA-256", r.Mode)
		assert.Positive(t, r.PacketsIn, "%s packets", r.Mode)
		assert.Positive(t, r.Sent.CPUSeconds, "%s: the sender process reports its CPU time", r.Mode)
		if assert.NotNil(t, r.Sent.TCP, "%s: the sender reports its TCP counters", r.Mode) {
			// The sender's link pushes back and its queue holds all TCP
			// has in flight: nothing is lost before the receiver.
			assert.Zero(t, r.Sent.TCP.LinkDropsQueueFull, "%s: sender link drops", r.Mode)
		}
		if _, ok := r.Mode.LROConfig(); ok {
			require.NotNil(t, r.LRO, "%s engine stats", r.Mode)
			assert.Positive(t, r.LRO.MergedPackets, "%s merged packets", r.Mode)
		}
	}
}

// TestTable checks the human-readable table: a header, one line per row,
// SHA-256 verified.
func TestTable(t *testing.T) {
	code, out, errOut := runArgs(t, "-bytes", "1M", "-mode", "netlro", "-ipv6", "-streams", "2")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	assert.Contains(t, out, "IPv6, MTU 1500, 2 stream(s)")
	assert.Contains(t, out, "sender s/GB")
	var row string
	for line := range strings.Lines(out) {
		if strings.HasPrefix(strings.TrimSpace(line), "netlro ") {
			row = line
			break
		}
	}
	require.NotEmpty(t, row, out)
	assert.True(t, strings.HasSuffix(strings.TrimSpace(row), "yes"), "row %q", row)
	assert.Contains(t, out, "netlro engine: in ")
}

// TestPcap checks that -pcap captures what netstack receives, merged
// packets larger than the MTU among them.
func TestPcap(t *testing.T) {
	file := filepath.Join(t.TempDir(), "netlro.pcap")
	code, _, errOut := runArgs(t, "-bytes", "2M", "-mode", "netlro", "-pcap", file)
	require.Equal(t, 0, code, "stderr: %s", errOut)
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	require.Greater(t, len(data), 24)
	assert.Equal(t, uint32(0xa1b2c3d4), binary.LittleEndian.Uint32(data), "pcap magic")
	assert.Equal(t, uint32(101), binary.LittleEndian.Uint32(data[20:]), "LINKTYPE_RAW")
	var packets, merged int
	for off := 24; off+16 <= len(data); {
		incl := int(binary.LittleEndian.Uint32(data[off+8:]))
		orig := binary.LittleEndian.Uint32(data[off+12:])
		off += 16 + incl
		packets++
		if orig > iperf.DefaultMTU {
			merged++
		}
	}
	assert.Positive(t, packets)
	assert.Positive(t, merged, "packets larger than the MTU")
}

// TestImpairFlag runs a row over a corrupting link.
func TestImpairFlag(t *testing.T) {
	code, out, errOut := runArgs(t, "-bytes", "2M", "-mode", "netlro", "-impair", "corrupt", "-json")
	require.Equal(t, 0, code, "stderr: %s", errOut)
	var rep jsonReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	require.Len(t, rep.Results, 1)
	r := rep.Results[0]
	assert.True(t, r.Verified)
	require.NotNil(t, r.Sent.Pump)
	assert.Positive(t, r.Sent.Pump.Corrupted)
}

// TestUsageErrors checks that a wrong command line exits with code 2 and
// says what was wrong.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-mode", "nope"}, `unknown mode "nope"`},
		{[]string{"-impair", "nope"}, `unknown impairment profile "nope"`},
		{[]string{"-streams", "0"}, "-streams 0"},
		{[]string{"-bytes", "lots"}, "-bytes"},
		{[]string{"-listen", "192.0.2.2:5201"}, "-listen and -tap-name go together"},
		{[]string{"-tap", "-impair", "loss1"}, "tc netem"},
		{[]string{"-tso"}, "-tso goes with -tap"},
		{[]string{"-tap", "-tso", "-source", "io_uring"}, "-tso with -source io_uring"},
		{[]string{"-source", "recvmmsg"}, `unknown source "recvmmsg"`},
		{[]string{"-tap", "-tso", "-mode", "netstack"}, "-mode netstack with -tso"},
		{[]string{"stray"}, "unexpected arguments"},
		{[]string{"-soak", "1s", "-tap"}, "not with -tap"},
		{[]string{"-soak", "1s", "-soak-stream", "x"}, "-soak-stream x"},
		{[]string{"-soak", "1s", "-mode", "nope"}, `unknown mode "nope"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, _, errOut := runArgs(t, tc.args...)
			assert.Equal(t, exitUsage, code)
			assert.Contains(t, errOut, tc.want)
		})
	}
}

// TestTapNeedsRoot runs -tap as an unprivileged user: one line saying root
// is needed, exit code 2.
func TestTapNeedsRoot(t *testing.T) {
	cmd := unprivilegedSelf(t, "-tap")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "stderr: %s", stderr.String())
	assert.Equal(t, exitUsage, exit.ExitCode())
	assert.Equal(t, "netstack-server: -tap needs root (CAP_NET_ADMIN) to create a network namespace and a TAP device\n", stderr.String())
	assert.Empty(t, stdout.String())
}

// unprivilegedSelf returns a command running this program with args as an
// unprivileged user: directly when the test is not root, else a copy of
// the test binary run as nobody.
func unprivilegedSelf(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	if os.Geteuid() != 0 {
		cmd := exec.CommandContext(t.Context(), exe, args...)
		cmd.Env = append(os.Environ(), runMainEnv+"=1")
		return cmd
	}
	// The test's temporary directories are private (0700): open them,
	// and the one above, to the other user.
	dir := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	copyExe := filepath.Join(dir, "netstack-server.test")
	src, err := os.Open(exe)
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.OpenFile(copyExe, os.O_CREATE|os.O_WRONLY, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())
	cmd := exec.CommandContext(t.Context(), copyExe, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	return cmd
}
