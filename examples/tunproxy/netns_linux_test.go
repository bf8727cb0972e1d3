//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/netlro/netlro/examples/tunproxy/proxy"
	"github.com/netlro/netlro/internal/bench/iperf"
)

// The test network, which exists only inside the namespaces it makes:
//
//	client ns: tun0 10.211.1.1/24, default route into tun0
//	    tun0's fd is the proxy's (opened there with -tun-netns)
//	proxy ns:  the proxy process; veth 10.211.2.1/24
//	server ns: veth 10.211.2.2/24; iperf3 -s and the tests' listeners
//
// A client in the client namespace connecting to 10.211.2.2 sends into
// the TUN device; the proxy accepts and dials 10.211.2.2 from its own
// namespace over the veth pair.
const (
	clientAddr = "10.211.1.1"
	proxyAddr  = "10.211.2.1"
	serverAddr = "10.211.2.2"
	tunName    = "tun0"
)

// congestion is the TCP congestion control of the clients' and the
// iperf3 server's sockets: CUBIC, the usual Linux default, whatever the
// host's. With BBR, which keeps sending at its paced rate through loss,
// a thousand flows overflow the TUN device's queue (500 packets) so hard
// that some back off to minute-long retransmission timeouts.
const congestion = "cubic"

// setCongestion is a net.Dialer Control that sets congestion on a socket.
func setCongestion(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, congestion)
	})
	if err != nil {
		return err
	}
	return serr
}

// childEnv makes the test binary run as the proxy (see TestMain).
const childEnv = "TUNPROXY_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// topo is the three namespaces.
type topo struct {
	client, proxy, server string // namespace names
}

// skipUnlessNetns skips t where namespaces, TUN devices or iperf3 (when
// wanted) are missing.
func skipUnlessNetns(t *testing.T, needIperf3 bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) for network namespaces and a TUN device")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipping: the ip command (iproute2) is missing")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("skipping: no /dev/net/tun")
	}
	if _, err := exec.LookPath("iperf3"); needIperf3 && err != nil {
		t.Skip("skipping: iperf3 is not installed (apt-get install iperf3)")
	}
}

// newTopo builds the namespaces; t's cleanup deletes them.
func newTopo(t *testing.T) *topo { return newTopoNamed(t, "tp") }

// newTopoNamed is newTopo with the namespaces' names starting with
// prefix, so that tests running at once on one machine do not clash.
func newTopoNamed(t *testing.T, prefix string) *topo {
	t.Helper()
	pid := os.Getpid()
	tp := &topo{
		client: fmt.Sprintf("%sc-%d", prefix, pid),
		proxy:  fmt.Sprintf("%sp-%d", prefix, pid),
		server: fmt.Sprintf("%ss-%d", prefix, pid),
	}
	t.Cleanup(func() {
		for _, ns := range []string{tp.client, tp.proxy, tp.server} {
			exec.Command("ip", "netns", "delete", ns).Run()
		}
	})
	for _, cmd := range [][]string{
		{"netns", "add", tp.client},
		{"netns", "add", tp.proxy},
		{"netns", "add", tp.server},
		{"-n", tp.client, "link", "set", "lo", "up"},
		{"-n", tp.proxy, "link", "set", "lo", "up"},
		{"-n", tp.server, "link", "set", "lo", "up"},
		{"-n", tp.client, "tuntap", "add", "dev", tunName, "mode", "tun"},
		{"-n", tp.client, "addr", "add", clientAddr + "/24", "dev", tunName},
		{"-n", tp.client, "link", "set", tunName, "mtu", "1500", "up"},
		{"-n", tp.client, "route", "add", "default", "dev", tunName},
		{"link", "add", "vp", "netns", tp.proxy, "type", "veth", "peer", "name", "vs", "netns", tp.server},
		{"-n", tp.proxy, "addr", "add", proxyAddr + "/24", "dev", "vp"},
		{"-n", tp.server, "addr", "add", serverAddr + "/24", "dev", "vs"},
		{"-n", tp.proxy, "link", "set", "vp", "up"},
		{"-n", tp.server, "link", "set", "vs", "up"},
	} {
		out, err := exec.Command("ip", cmd...).CombinedOutput()
		require.NoError(t, err, "ip %s: %s", strings.Join(cmd, " "), out)
	}
	return tp
}

// impairedTUN opens the client namespace's TUN device in this process
// and forwards its packets, impaired by prof on their way from the
// client, to a SOCK_SEQPACKET socket, and returns that socket's other end
// for the proxy (-tun-fd): the impairment of internal/bench/iperf's profiles,
// which are a pump between sockets, on the TUN side. t's cleanup stops
// the pump.
func (tp *topo) impairedTUN(t *testing.T, prof iperf.Profile) (*os.File, *iperf.Pump) {
	t.Helper()
	fd, err := proxy.OpenTUNIn("/run/netns/"+tp.client, tunName, false)
	require.NoError(t, err)
	require.NoError(t, unix.SetNonblock(fd, true))
	tun := os.NewFile(uintptr(fd), tunName) // pollable: reads wait in Go's poller
	sp, err := iperf.Socketpair()
	require.NoError(t, err)
	a := os.NewFile(uintptr(sp[0]), "pump-end")
	c, err := net.FileConn(a)
	a.Close()
	require.NoError(t, err)
	pump := iperf.NewPumpConns(tun, c.(*net.UnixConn), prof, 1)
	b := os.NewFile(uintptr(sp[1]), "proxy-end")
	t.Cleanup(func() {
		pump.Close()
		b.Close()
	})
	return b, pump
}

// in runs fn on a thread inside namespace ns: sockets it makes live there.
func in(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the thread stays in the other namespace, so
		// the runtime discards it when this goroutine ends.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			errc <- err
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// dial connects to addr from namespace ns.
func dial(ctx context.Context, ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := in(ns, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// listen listens on addr in namespace ns.
func listen(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := in(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	return ln, err
}

// proxyProc is a proxy process running in the proxy namespace.
type proxyProc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	done   chan error
	memory chan string // the proxy's SIGUSR2 lines

	mu     sync.Mutex
	stderr strings.Builder // +checklocks:mu
}

// log returns what the proxy wrote to its stderr so far.
func (p *proxyProc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// startProxy runs the proxy on path in the proxy namespace, on the
// client namespace's TUN device, and waits until it relays. t's cleanup
// stops it if the test did not.
func (tp *topo) startProxy(t *testing.T, path string, extra ...string) *proxyProc {
	t.Helper()
	return tp.startProxyArgs(t, nil, append([]string{"-tun", tunName, "-tun-netns", "/run/netns/" + tp.client, "-path", path}, extra...)...)
}

// startProxyArgs runs the proxy in the proxy namespace with args and
// files as its fds 3 and on.
func (tp *topo) startProxyArgs(t *testing.T, files []*os.File, args ...string) *proxyProc {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	args = append([]string{"netns", "exec", tp.proxy, exe, "-json"}, args...)
	p := &proxyProc{cmd: exec.Command("ip", args...), done: make(chan error, 1), memory: make(chan string, 16)}
	p.cmd.Env = append(os.Environ(), childEnv+"=1")
	p.cmd.ExtraFiles = files
	p.cmd.Stdout = &p.stdout
	stderr, err := p.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, p.cmd.Start())
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), "relaying TCP") {
				ready <- ""
			}
			if _, m, ok := strings.Cut(sc.Text(), "tunproxy: memory: "); ok {
				p.memory <- m
			}
		}
		ready <- p.log()
		p.done <- p.cmd.Wait()
	}()
	select {
	case msg := <-ready:
		require.Empty(t, msg, "the proxy exited before it relayed")
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		t.Fatal("the proxy did not start within 30 s (hang guard)")
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// cpu returns the CPU time the proxy has used so far, user and system,
// from /proc (in USER_HZ ticks, which Linux fixes at 100 a second).
func (p *proxyProc) cpu(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	require.NoError(t, err)
	// Fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	require.NoError(t, err1)
	require.NoError(t, err2)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// heap asks the proxy for its live heap after a collection (SIGUSR2) and
// returns it in bytes, and the line it logged.
func (p *proxyProc) heap(t *testing.T) (int64, string) {
	t.Helper()
	m := p.mem(t)
	return m.heap, m.line
}

// memReport is what the proxy logs on SIGUSR2.
type memReport struct {
	active, dialing int64 // connections relayed and being dialed now
	heap            int64 // live heap after a collection, bytes
	goroutines      int64
	endpoints       int64 // netstack's TCP endpoints, in any state
	line            string
}

// mem asks the proxy for its memory report (SIGUSR2) and returns it.
func (p *proxyProc) mem(t *testing.T) memReport {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGUSR2))
	var line string
	select {
	case line = <-p.memory:
	case <-time.After(30 * time.Second):
		t.Fatal("the proxy did not report its memory within 30 s of SIGUSR2 (hang guard)")
	}
	// "N connections active (N half-closed), N dialing, N relayed; heap N bytes live, N goroutines, N endpoints (...)"
	num := func(before, after string) int64 {
		t.Helper()
		_, rest, ok := strings.Cut(line, before)
		if before == "" {
			rest, ok = line, true
		}
		require.True(t, ok, "memory line %q: no %q", line, before)
		f := strings.Fields(rest)
		require.True(t, len(f) >= 2 && strings.HasPrefix(f[1], after), "memory line %q: no %q after %q", line, after, before)
		n, err := strconv.ParseInt(f[0], 10, 64)
		require.NoError(t, err, "memory line %q", line)
		return n
	}
	return memReport{
		active:     num("", "connections"),
		dialing:    num("half-closed), ", "dialing"),
		heap:       num("heap ", "bytes"),
		goroutines: num("live, ", "goroutines"),
		endpoints:  num("goroutines, ", "endpoints"),
		line:       line,
	}
}

// rss returns the proxy's resident set size in bytes.
func (p *proxyProc) rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	require.NoError(t, err)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/pid/status")
	return 0
}

// stop ends the proxy with SIGTERM and returns its report.
func (p *proxyProc) stop(t *testing.T) Report {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-p.done:
		require.NoError(t, err, "proxy exit; its stderr:\n%s", p.log())
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		t.Fatal("the proxy did not exit within 30 s of SIGTERM (hang guard)")
	}
	var r Report
	require.NoError(t, json.Unmarshal(p.stdout.Bytes(), &r), "report: %s", p.stdout.String())
	return r
}

// iperf3Result is what the tests read of iperf3 -J.
type iperf3Result struct {
	Error string `json:"error"`
	End   struct {
		SumReceived struct {
			Bytes         int64   `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
}

// startIperf3Server runs iperf3 -s in the server namespace until t ends.
func (tp *topo) startIperf3Server(t *testing.T) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", tp.server, "iperf3", "-s", "-B", serverAddr)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Wait for its socket: connect from its own namespace.
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := dial(ctx, tp.server, net.JoinHostPort(serverAddr, "5201"))
		cancel()
		if err == nil {
			c.Close()
			return
		}
		require.Less(t, i, 300, "iperf3 -s did not listen within 30 s (hang guard): %v", err)
		time.Sleep(100 * time.Millisecond)
	}
}

// iperf3 runs iperf3 -c from the client namespace through the proxy.
func (tp *topo) iperf3(t *testing.T, secs, streams int, reverse bool) iperf3Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+60)*time.Second)
	defer cancel()
	args := []string{"netns", "exec", tp.client, "iperf3", "-c", serverAddr, "-t", strconv.Itoa(secs), "-P", strconv.Itoa(streams), "-C", congestion, "-J"}
	if reverse {
		args = append(args, "-R")
	}
	out, err := exec.CommandContext(ctx, "ip", args...).Output()
	var r iperf3Result
	require.NoError(t, json.Unmarshal(out, &r), "iperf3 -J output: %s", out)
	require.NoError(t, err, "iperf3: %s", r.Error)
	require.Empty(t, r.Error)
	return r
}

// readAll reads r to its end, with a hang guard on c.
func readAll(c net.Conn, w io.Writer) (int64, error) {
	if err := c.SetReadDeadline(time.Now().Add(120 * time.Second)); err != nil {
		return 0, err
	}
	return io.Copy(w, c)
}
