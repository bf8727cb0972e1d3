//go:build linux

package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/bench/iperf"
)

func TestMain(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// Addresses inside the test's client netstack: the client, and a
// destination that exists nowhere, which the proxy's Dial sends to a
// listener of this process.
var (
	clientAddr = tcpip.AddrFrom4([4]byte{192, 0, 2, 1})
	farAddr    = tcpip.AddrFrom4([4]byte{198, 51, 100, 7})
)

// rig is a client netstack joined to a proxy by a SOCK_SEQPACKET
// socketpair, which stands in for the TUN device (both carry bare IP
// packets), and a listener on loopback where the proxy's dials land.
type rig struct {
	client *stack.Stack
	cep    stack.LinkEndpoint
	p      *Proxy
	ln     net.Listener
	mu     sync.Mutex
	// dials are the destinations the proxy dialed.
	// +checklocks:mu
	dials []string
}

func newRig(t *testing.T, path Path) *rig {
	t.Helper()
	fds, err := iperf.Socketpair()
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &rig{ln: ln}
	r.p, err = New(Config{
		FD:   fds[1],
		Path: path,
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			r.mu.Lock()
			r.dials = append(r.dials, addr)
			r.mu.Unlock()
			if addr != net.JoinHostPort(farAddr.String(), "80") {
				return nil, fmt.Errorf("no route to %s", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, ln.Addr().String())
		},
	})
	require.NoError(t, err)
	r.cep, err = iperf.NewSenderLink(fds[0], 1500)
	require.NoError(t, err)
	r.client, err = iperf.NewStack(r.cep, clientAddr)
	require.NoError(t, err)
	t.Cleanup(func() {
		iperf.DestroyStack(r.client, r.cep)
		r.p.Close()
		ln.Close()
		unix.Close(fds[0])
		unix.Close(fds[1])
	})
	return r
}

// dial connects from the client netstack to addr:port through the proxy.
func (r *rig) dial(port uint16) (*gonet.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return gonet.DialContextTCP(ctx, r.client, tcpip.FullAddress{NIC: 1, Addr: farAddr, Port: port}, header.IPv4ProtocolNumber)
}

// serveEcho answers each connection on r.ln by reading it to its end and
// then writing back the SHA-256 of what it read, and closing: the reply
// can only come after the client's half-close went through the proxy.
func (r *rig) serveEcho(t *testing.T) {
	go func() {
		for {
			c, err := r.ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				if _, err := io.Copy(h, c); err != nil {
					return
				}
				c.Write(h.Sum(nil))
			}()
		}
	}()
}

// TestRelayHalfClose sends seeded streams through the proxy on each path
// that reads a socket, half-closes, and checks the far end's SHA-256 of
// them, which it sends back only after the half-close reached it, while
// merging is switched off and on under traffic on the netlro paths.
func TestRelayHalfClose(t *testing.T) {
	for _, path := range []Path{PathNetstack, PathNetlroGVisor, PathNetlroRead} {
		t.Run(string(path), func(t *testing.T) {
			r := newRig(t, path)
			r.serveEcho(t)
			const conns, size = 3, 1 << 20
			stop, done := make(chan struct{}), make(chan struct{})
			var switches int
			go func() {
				// Switch each time another 128 KiB went up, while the
				// streams flow, a bounded number of times.
				defer close(done)
				for next := uint64(0); switches < 100; runtime.Gosched() {
					select {
					case <-stop:
						return
					default:
					}
					if r.p.Stats().BytesUp < next {
						continue
					}
					if !r.p.SetMerging(switches%2 == 1) {
						return
					}
					switches++
					next += 128 << 10
				}
			}()
			var wg sync.WaitGroup
			errs := make([]error, conns)
			for i := range conns {
				wg.Go(func() {
					c, err := r.dial(80)
					if err != nil {
						errs[i] = err
						return
					}
					defer c.Close()
					want := sha256.New()
					if _, err := io.CopyN(io.MultiWriter(c, want), iperf.NewSource(5, i), size); err != nil {
						errs[i] = err
						return
					}
					if err := c.CloseWrite(); err != nil {
						errs[i] = err
						return
					}
					c.SetReadDeadline(time.Now().Add(60 * time.Second))
					got, err := io.ReadAll(c)
					switch {
					case err != nil:
						errs[i] = err
					case string(got) != string(want.Sum(nil)):
						errs[i] = fmt.Errorf("conn %d: far end's SHA-256 %x, sent %x", i, got, want.Sum(nil))
					}
				})
			}
			wg.Wait()
			close(stop)
			<-done
			require.NoError(t, errors.Join(errs...))
			st := r.p.Stats()
			assert.Equal(t, uint64(conns), st.Accepted)
			assert.Equal(t, uint64(conns*size), st.BytesUp)
			assert.Equal(t, uint64(conns*sha256.Size), st.BytesDown)
			if ls, ok := r.p.LROStats(); ok {
				t.Logf("%d switches; netlro %v", switches, ls)
				assert.True(t, path.LRO())
				assert.NotZero(t, ls.MergedPackets)
			}
		})
	}
}

// TestDialFailureResets checks that a connection whose destination the
// proxy cannot reach is refused, as it would have been without the
// proxy, and counted.
func TestDialFailureResets(t *testing.T) {
	r := newRig(t, PathNetlroRead)
	_, err := r.dial(81)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "connection was refused")
	assert.Equal(t, uint64(1), r.p.Stats().DialFailed)
	r.mu.Lock()
	defer r.mu.Unlock()
	assert.Equal(t, []string{net.JoinHostPort(farAddr.String(), strconv.Itoa(81))}, r.dials, "the proxy dialed the original destination")
}

// TestParsePath checks the flag values.
func TestParsePath(t *testing.T) {
	for _, p := range Paths {
		got, err := ParsePath(string(p))
		require.NoError(t, err)
		assert.Equal(t, p, got)
	}
	_, err := ParsePath("tun2socks")
	assert.ErrorContains(t, err, "unknown path")
	assert.True(t, PathNetlroVNet.VNetHdr())
	assert.False(t, PathNetlroRead.VNetHdr())
	assert.False(t, PathGVisorGRO.LRO())
}

// TestRelayPassesResetOn checks that a destination's reset reaches the
// client as a reset, not as the FIN of a stream that ended well.
func TestRelayPassesResetOn(t *testing.T) {
	r := newRig(t, PathNetlroRead)
	go func() {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		// The reset comes after the client's first byte, so that the
		// relay runs: a reset before the proxy's dial completed
		// fails the dial, and the client is refused.
		var b [1]byte
		c.SetReadDeadline(time.Now().Add(30 * time.Second)) // hang guard
		io.ReadFull(c, b[:])
		c.Write([]byte{'x'})
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	c, err := r.dial(80)
	require.NoError(t, err, "%+v", r.p.Stats())
	defer c.Close()
	_, err = c.Write([]byte{'?'})
	require.NoError(t, err)
	c.SetReadDeadline(time.Now().Add(30 * time.Second)) // hang guard
	// What the destination sent before its reset may or may not come
	// first (a reset drops what is not sent yet), but never an EOF.
	got, err := io.ReadAll(c)
	require.Error(t, err, "the client took the destination's reset for the end of its stream (after %q)", got)
	assert.Contains(t, err.Error(), "reset")
}
