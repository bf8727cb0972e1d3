// Package tapns makes a Linux network namespace holding one TAP device
// whose file descriptor this process keeps, so that the namespace's
// kernel TCP/IP stack and a netstack on the fd talk over a private link.
//
// Nothing it configures is visible outside the namespace: the TAP device
// is created inside it, and the addresses, routes and processes it sets up
// live there too. Close removes the namespace; the TAP device goes away
// with the fd. It needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ip
// command from iproute2.
package tapns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrPrivilege is wrapped by Check's error when the process may not create
// network namespaces or TAP devices.
var ErrPrivilege = errors.New("needs root (CAP_NET_ADMIN) to create a network namespace and a TAP device")

// namePrefix starts the name of every namespace New creates; the rest is
// the creating process's pid, so a leftover from a killed run can be told
// apart and removed.
const namePrefix = "netlro-"

// netnsDir is where ip netns keeps named namespaces.
const netnsDir = "/run/netns"

// Check reports why New cannot work here, or nil.
func Check() error {
	if os.Geteuid() != 0 {
		return ErrPrivilege
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("tapns: the ip command (iproute2) is missing: %w", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("tapns: no TUN/TAP support: %w", err)
	}
	return nil
}

// Config describes the namespace to create.
type Config struct {
	// Name is the namespace's name. "" means "netlro-" and the pid.
	Name string
	// IfName is the TAP device's name inside the namespace. "" means
	// "netlro0".
	IfName string
	// MTU is the TAP device's MTU. 0 means 1500.
	MTU int
	// Persistent creates a persistent TAP device (ip tuntap add) that no fd
	// holds, for a program that opens it by name (from inside the
	// namespace), instead of opening a TAP device for FD.
	Persistent bool
	// TSO opens the TAP device with IFF_VNET_HDR, so that each read and
	// write starts with a struct virtio_net_hdr, and turns on its checksum
	// and TSO offloads (TUNSETOFFLOAD): the kernel's TCP then sends
	// super-packets of up to 64 KiB through it. Not with Persistent.
	TSO bool
	// Addrs are the kernel side's addresses on the TAP device, with their
	// prefixes (the on-link routes). IPv6 addresses skip duplicate address
	// detection.
	Addrs []netip.Prefix
}

// Namespace is a network namespace with a TAP device in it.
type Namespace struct {
	// Name is the namespace's name, for ip -n and ip netns exec.
	Name string
	// IfName is the TAP device's name inside the namespace.
	IfName string
	// FD is the TAP device, opened IFF_TAP|IFF_NO_PI: each read and write
	// is one Ethernet frame. Close closes it. It is -1 with
	// Config.Persistent.
	FD int

	persistent bool
}

// New creates the namespace, the TAP device in it, and the addresses.
// Cancelling ctx stops the ip commands it runs. On failure it removes
// whatever it had created.
func New(ctx context.Context, cfg Config) (_ *Namespace, err error) {
	if err := Check(); err != nil {
		return nil, err
	}
	n := &Namespace{Name: cfg.Name, IfName: cfg.IfName, FD: -1, persistent: cfg.Persistent}
	if n.Name == "" {
		n.Name = namePrefix + strconv.Itoa(os.Getpid())
	}
	if n.IfName == "" {
		n.IfName = "netlro0"
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = 1500
	}
	removeStale()
	if err := ip(ctx, "netns", "add", n.Name); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	if cfg.Persistent {
		err = ip(ctx, "-n", n.Name, "tuntap", "add", "dev", n.IfName, "mode", "tap")
	} else {
		err = n.Do(func() error {
			fd, err := OpenTAP(n.IfName, cfg.TSO)
			n.FD = fd
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	cmds := [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", n.IfName, "mtu", strconv.Itoa(mtu), "up"},
	}
	for _, p := range cfg.Addrs {
		c := []string{"addr", "add", p.String(), "dev", n.IfName}
		if p.Addr().Is6() {
			c = append(c, "nodad")
		}
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		if err := ip(ctx, append([]string{"-n", n.Name}, c...)...); err != nil {
			return nil, err
		}
	}
	// Linux caches a closed connection's ssthresh and RTT per destination
	// (tcp_metrics) and starts the next one from them: one slow row of a
	// comparison would cut short the slow start of every row after it.
	// Each connection from the namespace starts afresh instead. Best
	// effort: where /proc/sys is read-only (some containers) the namespace
	// still works, and only comparisons lose this evenness.
	_ = n.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_no_metrics_save", []byte("1"), 0)
	})
	return n, nil
}

// Close closes or deletes the TAP device, and deletes the namespace.
// Processes still running in it keep it alive until they exit.
func (n *Namespace) Close() error {
	if n.FD >= 0 {
		unix.Close(n.FD)
		n.FD = -1
	}
	if n.persistent {
		// Deleting the namespace would delete it too; say so explicitly
		// rather than rely on it.
		_ = ip(context.Background(), "-n", n.Name, "tuntap", "del", "dev", n.IfName, "mode", "tap")
	}
	return ip(context.Background(), "netns", "delete", n.Name)
}

// ExecPrefix returns the command prefix that runs a program inside the
// namespace.
func (n *Namespace) ExecPrefix() []string {
	return []string{"ip", "netns", "exec", n.Name}
}

// Command returns a command that runs name with args inside the namespace.
func (n *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append(n.ExecPrefix(), name)
	return exec.CommandContext(ctx, argv[0], append(argv[1:], args...)...)
}

// Do runs fn on an OS thread that has entered the namespace, and waits for
// it. Sockets and devices fn creates belong to the namespace. The thread
// is never given back to the Go scheduler: it ends with fn.
func (n *Namespace) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the thread is in another namespace now,
		// so the runtime must discard it when this goroutine ends.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join(netnsDir, n.Name))
		if err != nil {
			errc <- fmt.Errorf("tapns: open namespace %s: %w", n.Name, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("tapns: enter namespace %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// DialContext connects to addr from inside the namespace, with the
// kernel's TCP/IP stack.
func (n *Namespace) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// OpenTAP opens the TAP device name in the calling thread's network
// namespace, creating it if it does not exist (then it lasts as long as
// the fd), with IFF_TAP|IFF_NO_PI, and with tso also IFF_VNET_HDR and the
// device's checksum and TSO offloads on (see Config.TSO); without, with
// every offload off.
func OpenTAP(name string, tso bool) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("tapns: open /dev/net/tun: %w", err)
	}
	var ifr struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	if len(name) >= unix.IFNAMSIZ {
		unix.Close(fd)
		return -1, fmt.Errorf("tapns: device name %q longer than %d bytes", name, unix.IFNAMSIZ-1)
	}
	copy(ifr.name[:], name)
	ifr.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if tso {
		ifr.flags |= unix.IFF_VNET_HDR
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("tapns: TUNSETIFF %s: %w", name, errno)
	}
	// Always set: a persistent device keeps the offloads of whoever had
	// it before, and a reader without IFF_VNET_HDR must not get
	// super-packets.
	if err := SetTSO(fd, tso); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tapns: %s: %w", name, err)
	}
	return fd, nil
}

// SetTSO turns the checksum and TSO offloads of the TAP or TUN device fd
// on (TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6|TUN_F_TSO_ECN), so that the
// kernel's TCP sends super-packets of up to 64 KiB through it, or every
// offload off. Only a device opened with IFF_VNET_HDR may have them on.
func SetTSO(fd int, on bool) error {
	offloads := 0
	if on {
		offloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
		return fmt.Errorf("TUNSETOFFLOAD: %w", err)
	}
	return nil
}

// removeStale deletes namespaces an earlier run left behind when it was
// killed before it could clean up: those named namePrefix and the pid of
// a process that no longer exists.
func removeStale() {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		pid, ok := strings.CutPrefix(e.Name(), namePrefix)
		if !ok {
			continue
		}
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		_ = ip(context.Background(), "netns", "delete", e.Name())
	}
}

// ip runs the ip command.
func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("tapns: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
