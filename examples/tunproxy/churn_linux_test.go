//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/examples/tunproxy/proxy"
)

var (
	churnWith  = flag.String("tunproxy.churn", "auto", "what makes TestChurnThroughProxy's connections: `tools` (ab and nginx), go (a Go client and server), or auto (the tools where both are installed)")
	churnConns = flag.Int("tunproxy.churn-conns", 20000, "connections per churn run in TestChurnThroughProxy")
	churnRuns  = flag.Int("tunproxy.churn-runs", 3, "with -tunproxy.full, churn runs per path, the paths interleaved")
)

// The churn: short HTTP/1.0 requests for a 16 KiB file, 100 at once,
// each on a connection of its own, which the server closes first, as
// nginx answers ab: the proxy's netstack is then the side that closes
// first towards the client.
const (
	churnAt   = 100
	churnFile = 16 << 10
	churnPort = "8080"
)

// churnResult is one churn run.
type churnResult struct {
	complete, failed int
	elapsed          time.Duration
	detail           string // the client's own words on what failed
}

// rate is the run's connections per second.
func (r churnResult) rate() float64 { return float64(r.complete) / r.elapsed.Seconds() }

// churnTools reports whether the churn runs with ab and nginx.
func churnTools(t *testing.T) bool {
	t.Helper()
	_, errAB := exec.LookPath("ab")
	_, errNginx := exec.LookPath("nginx")
	have := errAB == nil && errNginx == nil
	switch *churnWith {
	case "tools":
		if !have {
			t.Skip("skipping: -tunproxy.churn tools needs ab and nginx (apt-get install apache2-utils nginx-light)")
		}
		return true
	case "go":
		return false
	case "auto":
		return have
	}
	t.Fatalf("-tunproxy.churn %q: want tools, go or auto", *churnWith)
	return false
}

// startNginx runs an unmodified nginx in the server namespace, serving a
// 16 KiB file at serverAddr:8080, until t ends.
func (tp *topo) startNginx(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "16k"), bytes.Repeat([]byte("x"), churnFile), 0o644))
	conf := fmt.Sprintf(`daemon off;
master_process off;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[1]s;
	proxy_temp_path %[1]s;
	fastcgi_temp_path %[1]s;
	uwsgi_temp_path %[1]s;
	scgi_temp_path %[1]s;
	server { listen %[2]s; root %[1]s; }
}
`, dir, net.JoinHostPort(serverAddr, churnPort))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644))
	cmd := exec.Command("ip", "netns", "exec", tp.server, "nginx", "-e", filepath.Join(dir, "error.log"), "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	tp.waitListening(t, "nginx", func() string { return out.String() })
}

// waitListening waits until serverAddr:8080 takes connections in the
// server namespace (a bounded number of tries, 30 s at most).
func (tp *topo) waitListening(t *testing.T, what string, log func() string) {
	t.Helper()
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := dial(ctx, tp.server, net.JoinHostPort(serverAddr, churnPort))
		cancel()
		if err == nil {
			c.Close()
			return
		}
		require.Less(t, i, 300, "%s did not listen within 30 s (hang guard): %v; its output: %s", what, err, log())
		time.Sleep(100 * time.Millisecond)
	}
}

// startGoServer is startNginx's stand-in: it answers each request on
// serverAddr:8080 with the 16 KiB file, as HTTP/1.0, and closes first.
func (tp *topo) startGoServer(t *testing.T) {
	t.Helper()
	ln, err := listen(tp.server, net.JoinHostPort(serverAddr, churnPort))
	require.NoError(t, err)
	reply := append([]byte(fmt.Sprintf("HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n", churnFile)), bytes.Repeat([]byte("x"), churnFile)...)
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(30 * time.Second)) // hang guard
				var req [4096]byte
				for n := 0; n < len(req); {
					m, err := c.Read(req[n:])
					n += m
					if bytes.Contains(req[:n], []byte("\r\n\r\n")) {
						c.Write(reply)
						return
					}
					if err != nil {
						return
					}
				}
			})
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	tp.waitListening(t, "the Go server", func() string { return "" })
}

// abLine matches the lines of ab's report the test reads.
var abLine = regexp.MustCompile(`(?m)^(Complete requests|Failed requests|Non-2xx responses|Time taken for tests):\s+([0-9.]+)`)

// ab runs an unmodified ab in the client namespace: n requests, churnAt
// at once, each on a connection of its own (no -k).
func (tp *topo) ab(t *testing.T, n int) churnResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(60+n/50)*time.Second) // hang guard
	defer cancel()
	url := "http://" + net.JoinHostPort(serverAddr, churnPort) + "/16k"
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.client, "ab", "-n", strconv.Itoa(n), "-c", strconv.Itoa(churnAt), "-s", "20", url).CombinedOutput()
	r := churnResult{detail: string(out)}
	if err != nil {
		r.failed = n
		r.detail = fmt.Sprintf("ab: %v\n%s", err, out)
		return r
	}
	for _, m := range abLine.FindAllStringSubmatch(string(out), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		switch m[1] {
		case "Complete requests":
			r.complete = int(v)
		case "Failed requests", "Non-2xx responses":
			r.failed += int(v)
		case "Time taken for tests":
			r.elapsed = time.Duration(v * float64(time.Second))
		}
	}
	return r
}

// goChurn is ab's stand-in: churnAt clients in the client namespace make
// n HTTP/1.0 requests between them, each on a connection of its own, and
// check that each reply carries the whole file.
func (tp *topo) goChurn(t *testing.T, n int) churnResult {
	t.Helper()
	var next, failed atomic.Int64
	var mu sync.Mutex
	var errs []error
	req := []byte("GET /16k HTTP/1.0\r\nHost: " + serverAddr + "\r\n\r\n")
	one := func(d *net.Dialer) error {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second) // ab's -s 20
		defer cancel()
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(serverAddr, churnPort))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		if _, err := c.Write(req); err != nil {
			return err
		}
		b, err := io.ReadAll(c)
		if err != nil {
			return err
		}
		if _, body, ok := bytes.Cut(b, []byte("\r\n\r\n")); !ok || len(body) != churnFile {
			return fmt.Errorf("a reply of %d bytes, not the %d-byte file", len(b), churnFile)
		}
		return nil
	}
	start := time.Now()
	var wg sync.WaitGroup
	for range churnAt {
		wg.Go(func() {
			// Each client keeps one thread in the client namespace,
			// where its sockets are made.
			err := in(tp.client, func() error {
				d := net.Dialer{Control: setCongestion}
				// As ab, give up at the first failure: with the
				// TIME-WAIT stall each further one costs 20 s.
				for failed.Load() == 0 && next.Add(1) <= int64(n) {
					if err := one(&d); err != nil {
						failed.Add(1)
						mu.Lock()
						if len(errs) < 5 {
							errs = append(errs, err)
						}
						mu.Unlock()
					}
				}
				return nil
			})
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	r := churnResult{complete: int(min(next.Load(), int64(n))) - int(failed.Load()), failed: int(failed.Load()), elapsed: time.Since(start)}
	if len(errs) > 0 {
		r.detail = fmt.Sprintf("first errors: %v", errors.Join(errs...))
	}
	return r
}

// settled waits until the proxy relays nothing and its netstack holds no
// endpoint, polling its report a bounded number of times (what netstack
// keeps after a connection ends goes on its own timers), and returns the
// last report.
func settled(t *testing.T, p *proxyProc) memReport {
	t.Helper()
	var m memReport
	for i := range 100 {
		m = p.mem(t)
		if m.active == 0 && m.dialing == 0 && m.endpoints == 0 {
			break
		}
		if i < 99 {
			time.Sleep(50 * time.Millisecond) // netstack's timers, bounded by i
		}
	}
	return m
}

// TestChurnThroughProxy makes thousands of short connections through the
// proxy, 100 at once, each closed first by the server (issue 21: with
// gVisor's 60 s TIME-WAIT every path stopped taking connections after
// about 3,500), with ab and nginx where installed and a Go client and
// server otherwise: every request must complete, and afterwards the
// proxy's netstack must hold no endpoint, and its goroutines and live
// heap be back where they started. CI runs 20,000 connections on the
// default path; -tunproxy.full runs the netstack, netlro-read and
// netlro-vnet paths interleaved, -tunproxy.churn-runs times each, and
// prints connections per second against netstack alone.
func TestChurnThroughProxy(t *testing.T) {
	skipUnlessNetns(t, false)
	if raceEnabled {
		t.Skip("skipping under -race: 20,000 connections through a race-built proxy take minutes; .ci/run runs this test without -race")
	}
	tools := churnTools(t)
	tp := newTopoNamed(t, "t21")
	churn, with := tp.goChurn, "a Go client and server"
	if tools {
		tp.startNginx(t)
		churn, with = tp.ab, "ab and nginx"
	} else {
		tp.startGoServer(t)
	}
	n := *churnConns
	paths, runs := []proxy.Path{proxy.DefaultPath}, 1
	if *full {
		paths, runs = []proxy.Path{proxy.PathNetstack, proxy.PathNetlroRead, proxy.PathNetlroVNet}, *churnRuns
	}
	rates := make(map[proxy.Path][]float64)
	for run := range runs {
		for _, path := range paths {
			name := fmt.Sprintf("%s run %d", path, run)
			p := tp.startProxy(t, string(path))
			// The start: after a first 100 connections, which make
			// what the proxy keeps for good (the netlro-vnet path's
			// receive buffers, 3.5 MB, on its first reads).
			warm := churn(t, churnAt)
			require.Zero(t, warm.failed, "%s: warm-up: %s", name, warm.detail)
			before := settled(t, p)
			r := churn(t, n)
			require.Zero(t, r.failed, "%s: %d of %d connections failed with %s: %s", name, r.failed, n, with, r.detail)
			require.Equal(t, n, r.complete, "%s: %s", name, r.detail)
			after := settled(t, p)
			rep := p.stop(t)
			t.Logf("%s: %d connections, %d at once, with %s, in %s: %.0f connections/s\n\tbefore: %s\n\tafter:  %s\n\tnetstack: %+v",
				name, n, churnAt, with, r.elapsed.Round(time.Millisecond), r.rate(), before.line, after.line, rep.Proxy.Netstack)
			assert.Zero(t, after.active, "%s: connections still relayed", name)
			assert.Zero(t, after.endpoints, "%s: endpoints netstack still holds: %s", name, after.line)
			assert.Equal(t, before.goroutines, after.goroutines, "%s: the proxy's goroutines before and after", name)
			// Back to the start: a leak of what one connection holds
			// (a relay, an endpoint, a copy buffer) would add well
			// over 4 MiB over 20,000 connections.
			assert.LessOrEqual(t, after.heap, before.heap+(4<<20), "%s: the proxy's live heap before and after", name)
			assert.GreaterOrEqual(t, rep.Proxy.Accepted, uint64(n), "%s: connections relayed", name)
			assert.Zero(t, rep.Proxy.Aborted, "%s: relays ended by a reset", name)
			rates[path] = append(rates[path], r.rate())
		}
	}
	if !*full {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d connections per run, %d at once, with %s; %d runs per path, interleaved\n", n, churnAt, with, runs)
	fmt.Fprintf(&b, "%-12s %12s %18s %12s\n", "path", "conn/s mean", "runs", "vs netstack")
	mean := func(v []float64) float64 {
		s := 0.0
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	base := mean(rates[proxy.PathNetstack])
	for _, path := range paths {
		var runs []string
		for _, v := range rates[path] {
			runs = append(runs, fmt.Sprintf("%.0f", v))
		}
		fmt.Fprintf(&b, "%-12s %12.0f %18s %11.2fx\n", path, mean(rates[path]), strings.Join(runs, " "), mean(rates[path])/base)
	}
	t.Log(b.String())
}
