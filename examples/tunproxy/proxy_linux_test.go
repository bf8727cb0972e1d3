//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/examples/tunproxy/proxy"
	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/internal/bench/iperf"
)

var (
	full     = flag.Bool("tunproxy.full", false, "run the full measurement matrix (bench.sh) instead of CI's bounded subset")
	secs     = flag.Int("tunproxy.time", 10, "seconds per iperf3 run with -tunproxy.full")
	pprofDir = flag.String("tunproxy.pprof", "", "with -tunproxy.full, write a CPU profile of the proxy per path into `dir`")
)

// TestIperf3ThroughProxy runs an unmodified iperf3 -c in the client
// namespace against an unmodified iperf3 -s in the server namespace,
// reached only through the proxy's own dials, both directions, for each
// receive path, and prints Gbit/s and the proxy's CPU seconds per GB side
// by side. CI runs a few paths for a second each; -tunproxy.full runs
// every path with 1 and 8 streams.
// pathSources are the sources this project's fdbased reads the TUN
// device with on each path where it is sure: forced, or (netlro-vnet)
// what the default picks with a virtio_net_hdr.
var pathSources = map[proxy.Path]fdbased.Source{
	proxy.PathNetlroRead:  fdbased.SourceRead,
	proxy.PathNetlroURing: fdbased.SourceIOUring,
	proxy.PathNetlroVNet:  fdbased.SourceRead,
}

func TestIperf3ThroughProxy(t *testing.T) {
	skipUnlessNetns(t, true)
	tp := newTopo(t)
	tp.startIperf3Server(t)

	paths := []proxy.Path{proxy.PathNetstack, proxy.PathNetlroRead, proxy.PathNetlroVNet}
	if raceEnabled {
		paths = []proxy.Path{proxy.PathNetlroRead}
	}
	streams, dur := []int{1}, 1
	if *full {
		paths, streams, dur = proxy.Paths, []int{1, 8}, *secs
	}
	type row struct {
		path           proxy.Path
		streams        int
		reverse        bool
		gbps, cpuPerGB float64
		merge          string // netlro's packets in per packet out
	}
	var rows []row
	for _, path := range paths {
		for _, n := range streams {
			for _, reverse := range []bool{false, true} {
				// A proxy per row, so that its counters are the row's.
				name := fmt.Sprintf("%s-%s-%d", path, map[bool]string{false: "up", true: "down"}[reverse], n)
				var extra []string
				if *full && *pprofDir != "" {
					extra = []string{"-cpuprofile", filepath.Join(*pprofDir, name+".pprof")}
				}
				p := tp.startProxy(t, string(path), extra...)
				cpu0 := p.cpu(t)
				r := tp.iperf3(t, dur, n, reverse)
				cpu := p.cpu(t) - cpu0
				rep := p.stop(t)
				got := r.End.SumReceived
				require.Positive(t, got.Bytes, "%s: iperf3 received nothing", name)
				assert.Zero(t, rep.Proxy.Active, "%s: connections left open", name)
				rw := row{path: path, streams: n, reverse: reverse, gbps: got.BitsPerSecond / 1e9, cpuPerGB: cpu.Seconds() / (float64(got.Bytes) / 1e9)}
				for _, c := range rep.Sources {
					t.Logf("%s: fdbased reads %v", name, c)
					if want, ok := pathSources[path]; ok {
						assert.Equal(t, want, c.Source, "%s: the source its path asks for", name)
					}
				}
				if rep.LRO != nil {
					rw.merge = fmt.Sprintf("%.1f:1", rep.MergeRatio)
					t.Logf("%s: netlro %v", name, *rep.LRO)
					if path == proxy.PathNetlroRead && !reverse {
						assert.NotZero(t, rep.LRO.MergedPackets, "the kernel's segments merged on %s", name)
					}
				}
				rows = append(rows, rw)
			}
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-14s %-8s %7s %8s %10s %8s\n", "path", "dir", "streams", "Gbit/s", "CPU s/GB", "merge")
	for _, r := range rows {
		dir := "up"
		if r.reverse {
			dir = "down -R"
		}
		fmt.Fprintf(&b, "%-14s %-8s %7d %8.2f %10.2f %8s\n", r.path, dir, r.streams, r.gbps, r.cpuPerGB, r.merge)
	}
	t.Log(b.String())
}

// seedSum returns the SHA-256 of the first n bytes of seeded stream i.
func seedSum(seed uint64, i int, n int64) [32]byte {
	h := sha256.New()
	io.CopyN(h, iperf.NewSource(seed, i), n)
	return [32]byte(h.Sum(nil))
}

// downSeed seeds the streams the server sends back.
const downSeed = 0x646f776e

// verifiedConn is the client's side of one verified connection: it sends
// its index (4 bytes) and up bytes of seeded stream i, half-closes, and
// reads to the end what the server sends back, which must be down bytes
// of the down stream i. Both half-closes must pass through the proxy for
// it to end.
func verifiedConn(c net.Conn, seed uint64, i int, up, down int64) error {
	defer c.Close()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write([]byte{byte(i), byte(i >> 8), byte(i >> 16), byte(i >> 24)})
		if err == nil {
			_, err = io.CopyN(c, iperf.NewSource(seed, i), up)
		}
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	n, err := readAll(c, h)
	if werr := <-errc; werr != nil {
		return fmt.Errorf("conn %d: send: %w", i, werr)
	}
	switch {
	case err != nil:
		return fmt.Errorf("conn %d: receive: %w", i, err)
	case n != down:
		return fmt.Errorf("conn %d: received %d bytes, want %d (the server found the upload wrong, or the proxy cut it)", i, n, down)
	case [32]byte(h.Sum(nil)) != seedSum(downSeed^seed, i, down):
		return fmt.Errorf("conn %d: SHA-256 of the download differs", i)
	}
	return nil
}

// verifyingServer accepts on ln until it is closed. For each connection
// it reads the index and the seeded stream to its end and checks its
// SHA-256; only if it matches does it send down bytes of the down stream
// back, then it closes. It reports what went wrong to bad.
func verifyingServer(ln net.Listener, seed uint64, up, down int64, bad chan<- error, wg *sync.WaitGroup) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			var idx [4]byte
			if _, err := io.ReadFull(c, idx[:]); err != nil {
				bad <- fmt.Errorf("server: read index: %w", err)
				return
			}
			i := int(idx[0]) | int(idx[1])<<8 | int(idx[2])<<16 | int(idx[3])<<24
			h := sha256.New()
			n, err := readAll(c, h)
			switch {
			case err != nil:
				bad <- fmt.Errorf("server: conn %d: %w", i, err)
				return
			case n != up:
				bad <- fmt.Errorf("server: conn %d: %d bytes, want %d", i, n, up)
				return
			case [32]byte(h.Sum(nil)) != seedSum(seed, i, up):
				bad <- fmt.Errorf("server: conn %d: SHA-256 of the upload differs", i)
				return
			}
			if _, err := io.CopyN(c, iperf.NewSource(downSeed^seed, i), down); err != nil {
				bad <- fmt.Errorf("server: conn %d: send down: %w", i, err)
			}
		})
	}
}

// verifiedRun makes conns connections from the client namespace through
// the proxy to a verifying server in the server namespace, all open at
// once, then moves up and down bytes on each concurrently, and returns
// the time the transfers took and every error.
func (tp *topo) verifiedRun(t *testing.T, conns int, up, down int64, seed uint64) (time.Duration, []error) {
	t.Helper()
	ln, err := listen(tp.server, net.JoinHostPort(serverAddr, "5202"))
	require.NoError(t, err)
	bad := make(chan error, conns)
	var swg sync.WaitGroup
	go verifyingServer(ln, seed, up, down, bad, &swg)
	defer func() {
		ln.Close()
		swg.Wait()
	}()

	// Dial from one thread in the client namespace: the sockets stay in
	// it, and are then used from any goroutine.
	cs := make([]net.Conn, 0, conns)
	dialStart := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err = in(tp.client, func() error {
		d := net.Dialer{Control: setCongestion}
		for range conns {
			c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(serverAddr, "5202"))
			if err != nil {
				return err
			}
			cs = append(cs, c)
		}
		return nil
	})
	if err != nil {
		for _, c := range cs {
			c.Close()
		}
		require.NoError(t, err, "dial %d of %d", len(cs)+1, conns)
	}
	t.Logf("%d connections open through the proxy in %s", conns, time.Since(dialStart).Round(time.Millisecond))
	start := time.Now()
	errs := make([]error, conns)
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() { errs[i] = verifiedConn(c, seed, i, up, down) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	ln.Close()
	swg.Wait()
	close(bad)
	for err := range bad {
		errs = append(errs, err)
	}
	return elapsed, errs
}

// TestVerifiedThroughProxyMixed sends seeded streams both ways through
// the proxy while the packets the client's kernel sends into the TUN
// device are impaired by the mixed profile (loss, reordering,
// duplication, corruption: internal/bench/iperf's pump, between the TUN device
// and the proxy's -tun-fd socket, since this kernel has no netem), and
// checks every byte's SHA-256 at the far end, half-closes included: on
// the batch-end path and on the timer path.
func TestVerifiedThroughProxyMixed(t *testing.T) {
	skipUnlessNetns(t, false)
	prof, err := iperf.ParseProfile("mixed")
	require.NoError(t, err)
	tp := newTopo(t)
	for _, path := range []proxy.Path{proxy.PathNetlroRead, proxy.PathNetlroGVisor} {
		t.Run(string(path), func(t *testing.T) {
			f, pump := tp.impairedTUN(t, prof)
			p := tp.startProxyArgs(t, []*os.File{f}, "-tun-fd", "3", "-path", string(path))
			up, down := int64(8<<20), int64(2<<20)
			if raceEnabled {
				up, down = 1<<20, 256<<10
			}
			elapsed, errs := tp.verifiedRun(t, 4, up, down, 1)
			require.NoError(t, errors.Join(errs...))
			rep := p.stop(t)
			ps := pump.Stats()
			t.Logf("%s: 4 connections, %d bytes up and %d down each verified in %s; pump %+v; netlro %v", path, up, down, elapsed.Round(time.Millisecond), ps, *rep.LRO)
			assert.Equal(t, uint64(4), rep.Proxy.Accepted)
			assert.NotZero(t, ps.Dropped)
			assert.NotZero(t, ps.Reordered)
			assert.NotZero(t, ps.Corrupted)
			assert.NotZero(t, rep.LRO.MergedPackets, "segments merged under impairment")
		})
	}
}

// TestManyConnectionsThroughProxy holds 1000 connections open through the
// proxy at once, moves verified bytes both ways on all of them, three
// rounds, and checks that the proxy's memory stays flat from round to
// round. With -tunproxy.full it also prints throughput, merge ratio and
// CPU per GB at 1, 8, 64 and 1000 connections.
func TestManyConnectionsThroughProxy(t *testing.T) {
	skipUnlessNetns(t, false)
	if raceEnabled {
		t.Skip("skipping under -race: a thousand connections through a race-built proxy take minutes; .ci/run runs this test without -race")
	}
	tp := newTopo(t)
	const conns = 1000
	path := proxy.DefaultPath
	p := tp.startProxy(t, string(path))
	var heap []int64
	for round := range 3 {
		elapsed, errs := tp.verifiedRun(t, conns, 16<<10, 4<<10, uint64(round))
		require.NoError(t, errors.Join(errs...), "round %d", round)
		h, line := p.heap(t)
		heap = append(heap, h)
		t.Logf("round %d: %d connections verified in %s; proxy RSS %d MiB; %s", round, conns, elapsed.Round(time.Millisecond), p.rss(t)>>20, line)
	}
	rep := p.stop(t)
	assert.Equal(t, uint64(3*conns), rep.Proxy.Accepted)
	assert.Zero(t, rep.Proxy.Active)
	// Flat: the live heap after a round, all its connections closed,
	// does not grow with the rounds; a leak of one copy buffer per
	// connection would add 64 MiB a round.
	assert.LessOrEqual(t, heap[2], heap[0]+heap[0]/2+(4<<20), "live heap after each round, bytes: %v", heap)

	if !*full {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-14s %9s %6s %8s %10s %8s\n", "path", "max-flows", "conns", "Gbit/s", "CPU s/GB", "merge")
	for _, c := range []struct {
		path     proxy.Path
		maxFlows int
	}{{proxy.PathNetlroRead, proxy.DefaultMaxFlows}, {proxy.PathNetlroRead, 8}, {proxy.PathNetlroVNet, proxy.DefaultMaxFlows}} {
		for _, n := range []int{1, 8, 64, 1000} {
			p := tp.startProxy(t, string(c.path), "-max-flows", strconv.Itoa(c.maxFlows))
			per := int64(1<<30) / int64(n)
			elapsed, errs := tp.verifiedRun(t, n, per, 0, 9)
			require.NoError(t, errors.Join(errs...))
			rep := p.stop(t)
			bytes := float64(per * int64(n))
			fmt.Fprintf(&b, "%-14s %9d %6d %8.2f %10.2f %7.1f:1\n", c.path, c.maxFlows, n, bytes*8/elapsed.Seconds()/1e9, rep.CPUPerGB, rep.MergeRatio)
		}
	}
	t.Log(b.String())
}

// TestMain's child mode is what startProxy runs; a usage error must be
// clear without privilege.
func TestUsageErrors(t *testing.T) {
	var out, errb strings.Builder
	assert.Equal(t, exitUsage, run([]string{}, &out, &errb))
	assert.Contains(t, errb.String(), "one of -tun and -tun-fd is required")
	errb.Reset()
	assert.Equal(t, exitUsage, run([]string{"-tun", "x", "-path", "nope"}, &out, &errb))
	assert.Contains(t, errb.String(), "unknown path")
	if os.Geteuid() != 0 {
		errb.Reset()
		assert.Equal(t, exitUsage, run([]string{"-tun", "tunproxy-x"}, &out, &errb))
		assert.Contains(t, errb.String(), "CAP_NET_ADMIN")
	}
}
