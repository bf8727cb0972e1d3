package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// childAttr makes the receiving process die with the benchmark, so that an
// interrupted run leaves no receiver behind.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// errNoRoot says why the kernel sender is not available.
var errNoRoot = errors.New("the kernel sender needs root (a network namespace and a TUN device)")

// tunName is the name of the kernel sender's TUN device, in its namespace.
func tunName() string { return namePrefix + "k0" }

// netns is a network namespace of our own and a goroutine locked to a
// thread inside it: sockets and TUN devices made on that thread belong to
// the namespace, the rest of the process stays outside.
type netns struct {
	name string
	run  chan func()
}

func newNetns() (*netns, error) {
	n := &netns{name: fmt.Sprintf("%s-%d", namePrefix, os.Getpid()), run: make(chan func())}
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add: %v: %s", err, out)
	}
	f, err := os.Open("/run/netns/" + n.name)
	if err != nil {
		n.remove()
		return nil, err
	}
	defer f.Close()
	errc := make(chan error)
	go func() {
		// The thread never leaves the namespace: returning with it locked
		// makes the runtime end the thread.
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for fn := range n.run {
			fn()
		}
	}()
	if err := <-errc; err != nil {
		n.remove()
		return nil, fmt.Errorf("setns: %w", err)
	}
	return n, nil
}

// do runs fn on the namespace's thread.
func (n *netns) do(fn func()) {
	done := make(chan struct{})
	n.run <- func() { fn(); close(done) }
	<-done
}

func (n *netns) ip(args ...string) error {
	out, err := exec.Command("ip", append([]string{"-n", n.name}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %v: %v: %s", args, err, out)
	}
	return nil
}

func (n *netns) remove() {
	exec.Command("ip", "netns", "del", n.name).Run()
}

func (n *netns) close() {
	close(n.run)
	n.remove()
}

// newKernelSender is the topology of Tailscale's measurement: Linux's TCP
// in a namespace of our own, through a kernel TUN device that the sending
// wireguard-go opened (tun.CreateTUN turns on the virtio header and TSO,
// and wireguard-go's Read splits the kernel's TSO packets into a batch).
func newKernelSender(k key, peerPublic string, peerPort int) (*sender, error) {
	if os.Geteuid() != 0 {
		return nil, errNoRoot
	}
	ns, err := newNetns()
	if err != nil {
		return nil, err
	}
	var d tun.Device
	ns.do(func() { d, err = tun.CreateTUN(tunName(), tunnelMTU) })
	if err != nil {
		ns.close()
		return nil, fmt.Errorf("create TUN: %w", err)
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", tunName(), "up"},
		{"addr", "add", senderV4 + "/24", "dev", tunName()},
		{"addr", "add", senderV6 + "/64", "dev", tunName(), "nodad"},
	} {
		if err := ns.ip(args...); err != nil {
			d.Close()
			ns.close()
			return nil, err
		}
	}
	dev := &counted{Device: d}
	// The bind's sockets are made on this goroutine's thread, outside the
	// namespace: the tunnel runs over the host's loopback.
	bind := &countingBind{Bind: conn.NewDefaultBind()}
	wg, _, err := newWG(dev, bind, k.Private, peerPublic, fmt.Sprintf("127.0.0.1:%d", peerPort), []string{receiverV4 + "/32", receiverV6 + "/128"})
	if err != nil {
		d.Close()
		ns.close()
		return nil, err
	}
	return &sender{
		dev:  dev,
		bind: bind,
		dial: func(ctx context.Context, localPort int, to netip.AddrPort) (c net.Conn, err error) {
			from := senderV4
			if to.Addr().Is6() {
				from = senderV6
			}
			dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from), Port: localPort}}
			ns.do(func() { c, err = dialer.DialContext(ctx, "tcp", to.String()) })
			return c, err
		},
		close: func() {
			wg.Close()
			ns.close()
		},
	}, nil
}
