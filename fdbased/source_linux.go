package fdbased

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// A source is one way of reading an fd's frames into a reader's buffers:
// recvmmsg for a socket (mmsgSource), read(2) or readv(2) for other fds
// (readSource), or an io_uring multishot read (uringSource). Whether each
// frame comes after a virtio_net_hdr is the buffers' layout (rxBufs.vnet),
// not the source's concern.
type source interface {
	// read reads the frames the fd has ready, up to the batch size, into
	// b without waiting. It returns how many it read, and the error that
	// stopped it when that is 0 (EAGAIN when none was ready).
	read(b *rxBufs) (int, unix.Errno)
	// wait blocks until the fd may have frames or dispatch is being
	// stopped, and reports which. hup says the fd reported a hang-up or
	// an error.
	wait() (stopped, hup bool, errno unix.Errno)
	// atEOF reports whether a frame of length 0 is the fd's end rather
	// than an empty datagram.
	atEOF() bool
}

// poller waits for an fd to become readable, or for the endpoint's stop
// eventfd.
type poller struct {
	// pfds are polled while the fd has nothing to read: the stop
	// eventfd, then the fd.
	pfds [2]unix.PollFd
}

func newPoller(fd, stopFD int) poller {
	return poller{pfds: [2]unix.PollFd{
		{Fd: int32(stopFD), Events: unix.POLLIN},
		{Fd: int32(fd), Events: unix.POLLIN},
	}}
}

// wait implements source.wait with poll(2).
func (p *poller) wait() (stopped, hup bool, errno unix.Errno) {
	p.pfds[0].Revents, p.pfds[1].Revents = 0, 0
	if _, err := unix.Poll(p.pfds[:], -1); err != nil {
		errno, ok := err.(unix.Errno)
		if !ok {
			errno = unix.EINVAL
		}
		return false, false, errno
	}
	if p.pfds[0].Revents != 0 {
		return true, false, 0
	}
	rev := p.pfds[1].Revents
	if rev&unix.POLLNVAL != 0 {
		return false, false, unix.EBADF
	}
	return false, rev&(unix.POLLHUP|unix.POLLERR) != 0, 0
}

// hupPoller tells a socket's end of file from an empty message: it polls
// the socket, without waiting, for a hang-up.
type hupPoller struct {
	pfd [1]unix.PollFd
}

func newHupPoller(fd int) hupPoller {
	return hupPoller{pfd: [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}}
}

// hungUp reports whether the socket's peer is gone (a seqpacket socket
// then returns an empty message per call).
func (h *hupPoller) hungUp() bool {
	h.pfd[0].Revents = 0
	if _, err := unix.Poll(h.pfd[:], 0); err != nil {
		return false
	}
	return h.pfd[0].Revents&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLERR|unix.POLLNVAL) != 0
}

// mmsgSource reads a socket with recvmmsg, a batch per system call.
type mmsgSource struct {
	fd int
	poller
	hup hupPoller
}

func newMMsgSource(fd, stopFD int) *mmsgSource {
	return &mmsgSource{fd: fd, poller: newPoller(fd, stopFD), hup: newHupPoller(fd)}
}

// read implements source.
func (s *mmsgSource) read(b *rxBufs) (int, unix.Errno) {
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(s.fd),
		uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(len(b.msgs)), unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// atEOF implements source: an empty message is the end when the peer is
// gone (a seqpacket socket then returns one per call), and otherwise an
// empty datagram.
func (s *mmsgSource) atEOF() bool { return s.hup.hungUp() }

// readSource reads a non-socket fd (TAP, TUN, pipe) with read(2), or
// readv(2) when each frame comes after a virtio_net_hdr, one frame per
// system call until the fd has no more; a socket too, where
// Options.Source forces it.
type readSource struct {
	fd int
	poller
	// vnet counts the packets the kernel dropped for want of a
	// virtio_net_hdr (Options.VNetHdr); nil without.
	vnet *counters
	// hup, for a socket, tells its end from an empty message; nil for
	// any other fd, where a read of 0 bytes is the end.
	hup *hupPoller
}

func newReadSource(fd, stopFD int, isSocket bool, vnet *counters) *readSource {
	s := &readSource{fd: fd, poller: newPoller(fd, stopFD), vnet: vnet}
	if isSocket {
		h := newHupPoller(fd)
		s.hup = &h
	}
	return s
}

// read implements source. A read of 0 bytes, the end of the fd, is a
// frame of length 0 and the last of the batch.
func (s *readSource) read(b *rxBufs) (int, unix.Errno) {
	for k, drops := 0, 0; k < len(b.msgs); {
		n, errno := s.readOne(b, k)
		if drops < len(b.msgs) && vnetDropped(s.vnet, errno) {
			drops++ // bounded, should the error not consume a packet
			continue
		}
		if errno != 0 {
			return k, errno
		}
		b.setLen(k, n)
		k++
		if n == 0 {
			return k, 0
		}
	}
	return len(b.msgs), 0
}

// readOne reads one frame into message k's iovecs, retrying on EINTR.
func (s *readSource) readOne(b *rxBufs, k int) (int, unix.Errno) {
	for {
		var n uintptr
		var errno unix.Errno
		if per := b.iovsPerMsg(); per == 1 {
			n, _, errno = unix.RawSyscall(unix.SYS_READ, uintptr(s.fd),
				uintptr(unsafe.Pointer(b.iovs[k].Base)), uintptr(b.iovs[k].Len))
		} else {
			n, _, errno = unix.RawSyscall(unix.SYS_READV, uintptr(s.fd),
				uintptr(unsafe.Pointer(&b.iovs[k*per])), uintptr(per))
		}
		if errno != unix.EINTR {
			return int(n), errno
		}
	}
}

// atEOF implements source: a read of 0 bytes is the end, except from a
// socket whose peer is still there (an empty datagram).
func (s *readSource) atEOF() bool { return s.hup == nil || s.hup.hungUp() }

// vnetDropped reports whether errno, from a read, says that the kernel
// dropped a packet it could not describe in a virtio_net_hdr (a GSO type
// the device was not given, in tun_put_user or packet_rcv_vnet), and then
// counts it in c as a frame dropped for its header: the next read goes
// on. c is nil without Options.VNetHdr.
func vnetDropped(c *counters, errno unix.Errno) bool {
	if c == nil || errno != unix.EINVAL {
		return false
	}
	c.dropVNet()
	return true
}
