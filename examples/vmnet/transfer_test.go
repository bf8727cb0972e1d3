package vmnet

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/containers/gvisor-tap-vsock/pkg/types"
	"github.com/containers/gvisor-tap-vsock/pkg/virtualnetwork"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/framed"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// errorf is fmt.Errorf, for the helpers.
var errorf = fmt.Errorf

// hangGuard bounds every connection's life: a broken transfer fails
// rather than hangs. It is not a measurement.
const hangGuard = 2 * time.Minute

// gateway is gvisor-tap-vsock's address, which rootlesskit's NAT maps to
// the host's 127.0.0.1.
var gateway = tcpip.AddrFrom4([4]byte{10, 0, 2, 1})

// network starts gvisor-tap-vsock's virtual network as rootlesskit
// configures it, with wrap (nil: none) around its link endpoint, and
// accepts the guest's end of a unix socket pair on it: a stream, as
// rootlesskit's parent does (AcceptStdio), or for Datagram a datagram
// socket, as for vfkit (AcceptVfkit). It returns the guest's end.
func network(t *testing.T, ctx context.Context, format framed.Format, mtu int, wrap func(stack.LinkEndpoint) (stack.LinkEndpoint, error)) net.Conn {
	t.Helper()
	var opts []virtualnetwork.Option
	if wrap != nil {
		opts = append(opts, virtualnetwork.WithLinkEndpointWrapper(wrap))
	}
	vn, err := virtualnetwork.New(&types.Configuration{
		MTU:               mtu,
		Subnet:            "10.0.2.0/24",
		GatewayIP:         "10.0.2.1",
		GatewayMacAddress: "5a:94:ef:e4:0c:dd",
		DHCPStaticLeases:  map[string]string{},
		NAT:               map[string]string{"10.0.2.1": "127.0.0.1"},
	}, opts...)
	require.NoError(t, err)
	typ, accept := unix.SOCK_STREAM, vn.AcceptStdio
	if format == framed.Datagram {
		typ, accept = unix.SOCK_DGRAM, vn.AcceptVfkit
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "vmnet")
		conns[i], err = net.FileConn(f)
		require.NoError(t, err)
		f.Close()
	}
	go accept(ctx, conns[0]) // it closes conns[0] when it returns
	t.Cleanup(func() { conns[0].Close() })
	return conns[1]
}

// payload returns n bytes from seed, and their SHA-256.
func payload(n int, seed uint64) ([]byte, [32]byte) {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed)})
	r.Read(b)
	return b, sha256.Sum256(b)
}

// TestTransfer sends a stream each way between a guest and the host
// through gvisor-tap-vsock's network, patched to read frames with framed
// and with netlro's LRO under its stack (or not), and compares the
// SHA-256 of what arrived with that of what was sent.
func TestTransfer(t *testing.T) {
	const size = 4 << 20
	for _, tc := range []struct {
		name   string
		format framed.Format
		mtu    int
		lro    bool
		merge  bool // the engine must have merged segments
	}{
		{"MTU 1500, LRO", framed.Hyperkit, 1500, true, true},
		{"MTU 1500, no wrapper", framed.Hyperkit, 1500, false, false},
		{"MTU 65520, LRO", framed.Hyperkit, 65520, true, false},
		{"datagrams (vfkit), MTU 1500, LRO", framed.Datagram, 1500, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var lroEP *lroendpoint.Endpoint
			var wrap func(stack.LinkEndpoint) (stack.LinkEndpoint, error)
			if tc.lro {
				wrap = func(ep stack.LinkEndpoint) (stack.LinkEndpoint, error) {
					w, err := lroendpoint.New(ep, lro.Config{})
					lroEP = w
					return w, err
				}
			}
			guestConn := network(t, ctx, tc.format, tc.mtu, wrap)
			guest, err := newVM(ctx, guestConn, tc.format, uint32(tc.mtu))
			require.NoError(t, err)
			defer guest.close()

			// The host's end: a listener on the loopback address the
			// gateway's NAT leads to.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			port := uint16(ln.Addr().(*net.TCPAddr).Port)

			up, upSum := payload(size, 1)
			down, downSum := payload(size, 2)
			var wg sync.WaitGroup
			var hostGot [32]byte
			var hostErr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				// First connection: the guest sends; second: the host sends.
				c, err := ln.Accept()
				if err != nil {
					hostErr = err
					return
				}
				c.SetDeadline(time.Now().Add(hangGuard))
				h := sha256.New()
				_, err = io.Copy(h, c)
				c.Close()
				copy(hostGot[:], h.Sum(nil))
				if err != nil {
					hostErr = err
					return
				}
				c, err = ln.Accept()
				if err != nil {
					hostErr = err
					return
				}
				c.SetDeadline(time.Now().Add(hangGuard))
				_, hostErr = c.Write(down)
				c.Close()
			}()

			dial := func() *gonet.TCPConn {
				c, err := gonet.DialContextTCP(ctx, guest.s, tcpip.FullAddress{NIC: 1, Addr: gateway, Port: port}, ipv4.ProtocolNumber)
				require.NoError(t, err)
				c.SetDeadline(time.Now().Add(hangGuard))
				return c
			}
			c := dial()
			_, err = c.Write(up)
			require.NoError(t, err)
			require.NoError(t, c.Close())

			c = dial()
			h := sha256.New()
			_, err = io.Copy(h, c)
			require.NoError(t, err)
			c.Close()
			wg.Wait()
			require.NoError(t, hostErr)
			assert.Equal(t, upSum[:], hostGot[:], "guest to host: SHA-256")
			assert.Equal(t, downSum[:], h.Sum(nil), "host to guest: SHA-256")
			if lroEP != nil {
				st := lroEP.Stats()
				t.Logf("LRO: %d packets in, %d out, %d segments merged", st.PacketsIn, st.PacketsOut, st.SegmentsMerged)
				if tc.merge {
					assert.NotZero(t, st.SegmentsMerged, "nothing merged at MTU %d", tc.mtu)
				}
			}
		})
	}
}
