package fdbased

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// errProbeRefused is what a fake io_uring probe says, as io_uring_setup
// does under kernel.io_uring_disabled=2 or a seccomp profile that denies
// it.
var errProbeRefused = fmt.Errorf("io_uring_setup: %w", unix.EPERM)

// newPipe returns a non-blocking pipe, closed when the test ends: the
// endpoint reads r, the test writes w. A pipe is a non-socket as a TAP
// device is, but keeps no frame boundaries: write one frame at a time.
func newPipe(t testing.TB) (r, w int) {
	t.Helper()
	var p [2]int
	require.NoError(t, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
	t.Cleanup(func() {
		unix.Close(p[0])
		unix.Close(p[1])
	})
	return p[0], p[1]
}

// TestSourceChoice: New picks per fd the cheapest source the fd and the
// kernel allow, or the one Options.Source forces, probes io_uring only
// for a fd that could use it, and says what each fd got and why.
func TestSourceChoice(t *testing.T) {
	sock, _ := socketPair(t, unix.SOCK_SEQPACKET)
	pipe, _ := newPipe(t)
	tests := []struct {
		name     string
		fd       int
		source   Source
		vnet     bool
		probe    error // what the fake probe says
		want     Source
		why      string
		fallback bool
		probed   bool
	}{
		{name: "socket", fd: sock, want: SourceRecvmmsg, why: whySocket},
		{name: "non-socket, io_uring allowed", fd: pipe, want: SourceIOUring, why: whyRing, probed: true},
		{name: "non-socket, io_uring refused", fd: pipe, probe: errProbeRefused, want: SourceRead, why: whyNoRing + errProbeRefused.Error(), fallback: true, probed: true},
		{name: "non-socket with VNetHdr", fd: pipe, vnet: true, want: SourceRead, why: whyVNet},
		{name: "forced read", fd: pipe, source: SourceRead, want: SourceRead, why: whyForced},
		{name: "forced io_uring", fd: pipe, source: SourceIOUring, want: SourceIOUring, why: whyForced, probed: true},
		{name: "forced recvmmsg", fd: sock, source: SourceRecvmmsg, want: SourceRecvmmsg, why: whyForced},
		{name: "forced read on a socket", fd: sock, source: SourceRead, want: SourceRead, why: whyForced},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			probes := 0
			e, err := newEndpointProbe(&Options{FDs: []int{tc.fd, tc.fd}, MTU: 1500, Source: tc.source, VNetHdr: tc.vnet}, func() error {
				probes++
				return tc.probe
			})
			require.NoError(t, err)
			defer e.Close()
			want := SourceChoice{FD: tc.fd, Source: tc.want, Why: tc.why}
			if tc.fallback {
				want.Fallback = tc.probe
			}
			assert.Equal(t, []SourceChoice{want, want}, e.Sources())
			if tc.probed {
				assert.Equal(t, 1, probes, "probed once per endpoint")
			} else {
				assert.Zero(t, probes, "probed for nothing")
			}
		})
	}
}

// TestForcedIOUringRefused: forcing io_uring where the kernel refuses it
// fails New, with the probe's reason.
func TestForcedIOUringRefused(t *testing.T) {
	pipe, _ := newPipe(t)
	_, err := newEndpointProbe(&Options{FDs: []int{pipe}, MTU: 1500, Source: SourceIOUring}, func() error { return errProbeRefused })
	require.ErrorIs(t, err, unix.EPERM)
	assert.NotErrorIs(t, err, ErrInvalidOptions)
}

// TestIOUringFallback: where io_uring cannot be used (the probe says so,
// as under kernel.io_uring_disabled or a seccomp profile), the default
// reads a non-socket with read(2), and says so; where it can, with the
// ring. Either way every frame arrives.
func TestIOUringFallback(t *testing.T) {
	tests := []struct {
		name  string
		probe func() error
		want  Source
	}{
		{"io_uring refused", func() error { return errProbeRefused }, SourceRead},
		{"io_uring allowed", probeURing, SourceIOUring},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == SourceIOUring {
				if err := probeURing(); err != nil {
					t.Skipf("skipping: io_uring unavailable here: %v", err)
				}
			}
			ours, peer := newPipe(t)
			e, err := newEndpointProbe(&Options{FDs: []int{ours}, MTU: 1500}, tc.probe)
			require.NoError(t, err)
			t.Cleanup(func() {
				e.Close()
				e.Wait()
			})
			r := newRecorder()
			e.Attach(fragDispatcher{r})
			const frames = 5
			for i := range frames {
				writeFrame(t, peer, makeFrame(300, false, "", i))
				waitFrames(t, e, r, uint64(i+1)) // a pipe keeps no boundaries
			}
			got := r.frames()
			require.Len(t, got, frames)
			for i, ev := range got {
				assert.Equal(t, makeFrame(300, false, "", i), ev.data)
			}
			c := e.Sources()[0]
			t.Logf("%v", c)
			assert.Equal(t, tc.want, c.Source)
			st := e.Stats()
			if tc.want == SourceRead {
				assert.True(t, errors.Is(c.Fallback, unix.EPERM), "Fallback says why: %v", c.Fallback)
				assert.Contains(t, c.String(), "io_uring unavailable")
				assert.Zero(t, st.RingBatches, "no batch read through io_uring")
				return
			}
			assert.NoError(t, c.Fallback)
			waitUntil(t, "the last batch to be counted as a ring batch", nil, func() bool {
				st = e.Stats()
				return st.RingBatches == st.Batches
			})
		})
	}
}

// TestSourceString pins the names the examples print.
func TestSourceString(t *testing.T) {
	for s, want := range map[Source]string{SourceAuto: "auto", SourceRecvmmsg: "recvmmsg", SourceRead: "read", SourceIOUring: "io_uring", numSources: "Source(4)"} {
		assert.Equal(t, want, s.String())
	}
	for s := range numSources {
		var got Source
		text, err := s.MarshalText()
		require.NoError(t, err)
		require.NoError(t, got.UnmarshalText(text))
		assert.Equal(t, s, got)
	}
	var got Source
	assert.Error(t, got.UnmarshalText([]byte("mmap")))
	c := SourceChoice{FD: 7, Source: SourceRead, Why: whyForced}
	assert.Equal(t, "fd 7: read (forced by Options.Source)", c.String())
}

// TestRingSetupFallback: where the probe at New found io_uring usable but
// a fd's ring then fails to be set up when dispatch starts, the fd is
// read with read(2), and Sources says so and why; at the next Attach,
// with a ring that sets up, it is io_uring again.
func TestRingSetupFallback(t *testing.T) {
	if err := probeURing(); err != nil {
		t.Skipf("skipping: io_uring unavailable here: %v", err)
	}
	ours, peer := newPipe(t)
	e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500})
	require.Equal(t, SourceIOUring, e.Sources()[0].Source)
	errSetup := fmt.Errorf("io_uring buffers: %w", unix.ENOMEM)
	e.sys.newRing = func(int, int, int, int, *atomic.Bool) (*uringSource, error) { return nil, errSetup }

	r := newRecorder()
	e.Attach(fragDispatcher{r})
	writeFrame(t, peer, makeFrame(300, false, "", 0))
	waitFrames(t, e, r, 1)
	c := e.Sources()[0]
	assert.Equal(t, SourceRead, c.Source)
	assert.ErrorIs(t, c.Fallback, unix.ENOMEM)
	assert.Equal(t, whyRingSetup+errSetup.Error(), c.Why)
	assert.Zero(t, e.Stats().RingBatches)

	e.Attach(nil)
	e.sys.newRing = newURingSource // read when a dispatch goroutine starts, after the next Attach
	e.Attach(fragDispatcher{r})
	writeFrame(t, peer, makeFrame(300, false, "", 1))
	waitFrames(t, e, r, 2)
	waitUntil(t, "a ring batch", nil, func() bool { return e.Stats().RingBatches > 0 })
	assert.Equal(t, SourceChoice{FD: ours, Source: SourceIOUring, Why: whyRing}, e.Sources()[0])
	require.Len(t, r.frames(), 2)
}
