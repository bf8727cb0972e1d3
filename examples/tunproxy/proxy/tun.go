//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrPrivilege is wrapped by OpenTUN's error when the process may not
// open or create the device.
var ErrPrivilege = errors.New("needs CAP_NET_ADMIN (root) to open a TUN device")

// OpenTUN opens the TUN device name in the calling thread's network
// namespace with IFF_TUN|IFF_NO_PI, creating it if it does not exist (it
// then lasts as long as the fd), and returns its fd, which the caller
// closes. With vnetHdr the device is opened with IFF_VNET_HDR and its
// checksum and TSO offloads are turned on, so that the kernel's TCP sends
// super-packets of up to 64 KiB through it; without, every offload is
// turned off, which a persistent device may still have from its last user.
func OpenTUN(name string, vnetHdr bool) (int, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return -1, fmt.Errorf("tunproxy: TUN device name %q: want 1 to %d bytes", name, unix.IFNAMSIZ-1)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV):
		return -1, fmt.Errorf("tunproxy: /dev/net/tun is missing (no TUN support; modprobe tun, or run the container with --device /dev/net/tun): %w", err)
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM):
		return -1, fmt.Errorf("tunproxy: open /dev/net/tun: %w: %w", ErrPrivilege, err)
	case err != nil:
		return -1, fmt.Errorf("tunproxy: open /dev/net/tun: %w", err)
	}
	var ifr struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(ifr.name[:], name)
	ifr.flags = unix.IFF_TUN | unix.IFF_NO_PI
	if vnetHdr {
		ifr.flags |= unix.IFF_VNET_HDR
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		unix.Close(fd)
		switch errno {
		case unix.EPERM, unix.EACCES:
			return -1, fmt.Errorf("tunproxy: TUNSETIFF %s: %w: %w", name, ErrPrivilege, errno)
		case unix.EBUSY:
			return -1, fmt.Errorf("tunproxy: TUNSETIFF %s: the device is in use by another process, or is a TAP device: %w", name, errno)
		}
		return -1, fmt.Errorf("tunproxy: TUNSETIFF %s: %w", name, errno)
	}
	offloads := 0
	if vnetHdr {
		offloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("tunproxy: TUNSETOFFLOAD %s: %w", name, err)
	}
	return fd, nil
}

// OpenTUNIn is OpenTUN in the network namespace at path (a file such as
// /run/netns/NAME, as ip netns makes), or in the process's own when path
// is "": so the proxy can dial out of one namespace while the device whose
// traffic it takes lives in another. The fd keeps working in the process's
// namespace.
func OpenTUNIn(path, name string, vnetHdr bool) (int, error) {
	if path == "" {
		return OpenTUN(name, vnetHdr)
	}
	type result struct {
		fd  int
		err error
	}
	c := make(chan result, 1)
	go func() {
		// No UnlockOSThread: the thread is left in the other namespace,
		// so the runtime must discard it when this goroutine ends.
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			c <- result{-1, fmt.Errorf("tunproxy: network namespace: %w", err)}
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			c <- result{-1, fmt.Errorf("tunproxy: enter network namespace %s: %w", path, err)}
			return
		}
		fd, err := OpenTUN(name, vnetHdr)
		c <- result{fd, err}
	}()
	r := <-c
	return r.fd, r.err
}
