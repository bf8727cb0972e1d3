package fdbased

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// waitLimit bounds every wait in these tests. It is a hang guard, never a
// measure of speed.
const waitLimit = 10 * time.Second

// socketPair returns two connected unix sockets of type typ, closed when
// the test ends: ours for the endpoint, the peer for the test.
func socketPair(t testing.TB, typ int) (ours, peer int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return fds[0], fds[1]
}

// socketPairs returns n SOCK_SEQPACKET socket pairs: the endpoint's ends
// and the test's.
func socketPairs(t testing.TB, n int) (ours, peers []int) {
	t.Helper()
	for range n {
		o, p := socketPair(t, unix.SOCK_SEQPACKET)
		ours, peers = append(ours, o), append(peers, p)
	}
	return ours, peers
}

// newTestEndpoint returns an Endpoint made from opts, closed and waited
// for when the test ends.
func newTestEndpoint(t testing.TB, opts *Options) *Endpoint {
	t.Helper()
	e, err := New(opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		e.Close()
		e.Wait()
	})
	return e
}

// waitUntil polls cond until it holds, failing the test after waitLimit.
// notify, if not nil, wakes it early.
func waitUntil(t testing.TB, what string, notify <-chan struct{}, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-notify:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
	}
}

// waitGoroutines waits until no more than n goroutines run.
func waitGoroutines(t testing.TB, n int) {
	t.Helper()
	waitUntil(t, "goroutines to exit", nil, func() bool { return runtime.NumGoroutine() <= n })
}

// waitFrames waits until e has read n frames and counted them all: the
// frames r got are those e says it delivered, the rest are counted as
// drops.
func waitFrames(t testing.TB, e *Endpoint, r *recorder, n uint64) {
	t.Helper()
	waitUntil(t, "frames to be read and counted", r.notify, func() bool {
		s := e.Stats()
		return s.Frames >= n && s.Delivered() == uint64(len(r.frames()))
	})
}

// makeFrame returns a frame of n bytes: with eth, an Ethernet header to
// dst of type IPv4; then what looks like an IPv4 header (version 4); then
// bytes that depend on seq, so that frames differ. A frame shorter than
// that is cut short.
func makeFrame(n int, eth bool, dst tcpip.LinkAddress, seq int) []byte {
	var b []byte
	if eth {
		b = make([]byte, header.EthernetMinimumSize)
		header.Ethernet(b).Encode(&header.EthernetFields{SrcAddr: peerMAC, DstAddr: dst, Type: header.IPv4ProtocolNumber})
	}
	ip := make([]byte, header.IPv4MinimumSize)
	ip[0] = 0x45
	binary.BigEndian.PutUint32(ip[4:], uint32(seq))
	b = append(b, ip...)
	for i := len(b); i < n; i++ {
		b = append(b, byte(i*7+seq))
	}
	return b[:n]
}

// writeFrame writes one frame to fd, which keeps message boundaries.
func writeFrame(t testing.TB, fd int, frame []byte) {
	t.Helper()
	n, err := unix.Write(fd, frame)
	require.NoError(t, err)
	require.Equal(t, len(frame), n)
}

// readFrame reads one message of at most max bytes from fd, waiting at
// most waitLimit.
func readFrame(t testing.TB, fd int, max int) []byte {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, int(waitLimit/time.Millisecond))
	for err == unix.EINTR {
		n, err = unix.Poll(pfd, int(waitLimit/time.Millisecond))
	}
	require.NoError(t, err)
	require.Equal(t, 1, n, "nothing to read after %v", waitLimit)
	b := make([]byte, max)
	n, err = unix.Read(fd, b)
	require.NoError(t, err)
	return b[:n]
}
