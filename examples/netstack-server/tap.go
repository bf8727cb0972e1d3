package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/internal/bench/iperf"
	"github.com/netlro/netlro/internal/bench/tapns"
)

// netstackMAC is the receiving netstack's MAC address on a TAP device: a
// locally administered unicast address.
var netstackMAC = tcpip.LinkAddress("\x02\x00\x00\x00\x00\x02")

// tapEnv runs rows with the Linux kernel's TCP sending from a network
// namespace, through a TAP device the namespace holds, into netstack. The
// sender runs in a child process started inside the namespace.
type tapEnv struct {
	ns     *tapns.Namespace
	source fdbased.Source // how this project's fdbased reads the TAP
	tso    bool           // the TAP takes TCP super-packets behind a virtio_net_hdr
	cc     string         // the kernel sender's congestion control
}

// newTapEnv creates the namespace and the TAP device. Without the
// privilege it fails with a usageError, exit code 2.
func newTapEnv(ctx context.Context, cfg iperf.Config, cc string, tso bool) (*tapEnv, error) {
	if err := tapns.Check(); err != nil {
		if errors.Is(err, tapns.ErrPrivilege) {
			return nil, usageError{"-tap " + err.Error()}
		}
		return nil, usageError{"-tap: " + err.Error()}
	}
	mtu := int(cfg.MTU)
	if mtu == 0 {
		mtu = iperf.DefaultMTU
	}
	if err := checkCongestionControl(cc); err != nil {
		return nil, usageError{fmt.Sprintf("-cc %s: %v", cc, err)}
	}
	ns, err := tapns.New(ctx, tapns.Config{MTU: mtu, Addrs: kernelPrefixes(), TSO: tso})
	if err != nil {
		return nil, err
	}
	return &tapEnv{ns: ns, cc: cc, tso: tso}, nil
}

// checkCongestionControl tells whether the kernel has the TCP congestion
// control cc, by setting it on a socket (which loads its module, as root),
// so that a typo fails at once rather than in the sender.
func checkCongestionControl(cc string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc); err != nil {
		return fmt.Errorf("not available: %w", err)
	}
	return nil
}

// kernelPrefixes are the kernel side's addresses in the namespace: the
// sender's, on the receiver's subnet.
func kernelPrefixes() []netip.Prefix {
	a4 := iperf.SenderAddr4.As4()
	a6 := iperf.SenderAddr6.As16()
	return []netip.Prefix{
		netip.PrefixFrom(netip.AddrFrom4(a4), 24),
		netip.PrefixFrom(netip.AddrFrom16(a6), 64),
	}
}

// Close removes the namespace and the TAP device.
func (t *tapEnv) Close() {
	if err := t.ns.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "netstack-server: cleanup: %v\n", err)
	}
}

func (t *tapEnv) describe(cfg iperf.Config, o options) string {
	tso := ""
	if t.tso {
		tso = " (TSO: super-packets of up to 64 KiB)"
	}
	return fmt.Sprintf("the Linux kernel's TCP (%s) sends from network namespace %s through TAP device %s%s into netstack; this project's fdbased reads it with -source %s\n%s",
		t.cc, t.ns.Name, t.ns.IfName, tso, t.source, describeRun(cfg))
}

func (t *tapEnv) run(ctx context.Context, cfg iperf.Config) (iperf.Result, error) {
	_, receiver := cfg.Addrs()
	remote := net.JoinHostPort(receiver.String(), strconv.Itoa(iperf.Port))
	link := iperf.LinkOptions{FD: t.ns.FD, EthernetHeader: true, Address: netstackMAC, Source: t.source, VNetHdr: t.tso}
	return iperf.RunReceiver(ctx, cfg, link, func(ctx context.Context) (iperf.SendResult, error) {
		return startSender(ctx, senderJob{Config: cfg, Kernel: true, Remote: remote, CC: t.cc}, t.ns.ExecPrefix(), nil)
	})
}
