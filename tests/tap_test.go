package tests

import (
	"context"
	"net"
	"net/netip"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/internal/bench/iperf"
	"github.com/netlro/netlro/internal/bench/tapns"
)

// tapMAC is the netstack's MAC address on the TAP device.
var tapMAC = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x02")

// newTestNamespace creates a network namespace with a TAP device for t,
// removed when t ends, or skips t where that needs a privilege it lacks.
func newTestNamespace(t *testing.T) *tapns.Namespace {
	t.Helper()
	if err := tapns.Check(); err != nil {
		t.Skipf("skipping: a network namespace with a TAP device: %v", err)
	}
	a4, a6 := iperf.SenderAddr4.As4(), iperf.SenderAddr6.As16()
	ns, err := tapns.New(t.Context(), tapns.Config{
		Name: "netlro-test-" + strconv.Itoa(int(testPid())),
		Addrs: []netip.Prefix{
			netip.PrefixFrom(netip.AddrFrom4(a4), 24),
			netip.PrefixFrom(netip.AddrFrom16(a6), 64),
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	return ns
}

// TestKernelSenderTAP has the Linux kernel's TCP, in a network namespace
// the test creates, send through a TAP device into netstack on this
// project's fdbased, with and without netlro, over IPv4 and IPv6, and
// checks every stream's SHA-256.
func TestKernelSenderTAP(t *testing.T) {
	ns := newTestNamespace(t)
	for _, v6 := range []bool{false, true} {
		for _, mode := range []iperf.Mode{iperf.ModeFdbased, iperf.ModeNetlro, iperf.ModeNetlroOffload} {
			t.Run(ipName(v6)+"/"+string(mode), func(t *testing.T) {
				cfg := iperf.Config{
					Mode: mode,
					IPv6: v6,
					Send: iperf.SendOptions{Streams: 2, Bytes: 4 << 20, Seed: 7},
				}
				_, receiver := cfg.Addrs()
				remote := net.JoinHostPort(receiver.String(), strconv.Itoa(iperf.Port))
				dial := func(ctx context.Context) (net.Conn, error) { return ns.DialContext(ctx, "tcp", remote) }
				ctx, cancel := context.WithTimeout(t.Context(), transferTimeout)
				defer cancel()
				link := iperf.LinkOptions{FD: ns.FD, EthernetHeader: true, Address: tapMAC}
				res, err := iperf.RunReceiver(ctx, cfg, link, func(ctx context.Context) (iperf.SendResult, error) {
					return iperf.Send(ctx, dial, cfg.Send, nil)
				})
				require.NoError(t, err)
				t.Logf("%d bytes in %.2fs, %d packets into netstack", res.Bytes, res.Seconds, res.PacketsIn)
				assert.Equal(t, cfg.Send.Bytes, res.Bytes)
				assert.True(t, res.Verified, "a stream arrived different from what the kernel sent")
				if res.LRO != nil {
					t.Logf("lro: %s", res.LRO)
					assert.NotZero(t, res.LRO.MergedPackets, "the kernel's segments merged")
				}
			})
		}
	}
}
