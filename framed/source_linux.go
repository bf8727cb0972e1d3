package framed

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
)

var errNotSocket = errors.New("framed: Datagram needs a net.Conn over a socket")

// newSource returns a sockSource for a net.Conn over a socket, and a
// readerSource for anything else.
func newSource(conn io.Reader, dgram bool) (source, error) {
	if s := newSockSource(conn); s != nil {
		return s, nil
	}
	if dgram {
		return nil, fmt.Errorf("%w, got %T: %w", errNotSocket, conn, ErrInvalidConfig)
	}
	return readerSource{conn}, nil
}

// sockSource reads a socket through Go's poller: recvfrom or recvmmsg
// with MSG_DONTWAIT, and a wait in the poller when nothing is ready and
// the caller will wait. The arguments and results of each call are kept
// in it, so that the function handed to syscall.RawConn.Read is made
// once, and a read allocates nothing.
type sockSource struct {
	rc syscall.RawConn
	// seqpacket: a message of length 0 is the end, not an empty frame.
	seqpacket bool
	recvFn    func(fd uintptr) bool

	// The current call's arguments and results.
	batch bool // recvmmsg into msgs, else recvfrom into p
	p     []byte
	wait  bool
	n     int
	errno unix.Errno
	// eof: a seqpacket socket's end was read after the frames of the
	// last batch.
	eof bool

	// recvmmsg's message headers and iovecs, one per slot.
	msgs []rawfile.MMsgHdr
	iovs []unix.Iovec
}

// newSockSource returns a sockSource for conn, or nil if conn is not a
// net.Conn over a socket.
func newSockSource(conn io.Reader) *sockSource {
	sc, ok := conn.(interface {
		net.Conn
		syscall.Conn
	})
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	sotype := -1
	if err := rc.Control(func(fd uintptr) {
		if t, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE); err == nil {
			sotype = t
		}
	}); err != nil || sotype < 0 {
		return nil
	}
	s := &sockSource{rc: rc, seqpacket: sotype == unix.SOCK_SEQPACKET}
	s.recvFn = s.recv
	return s
}

// read implements source with recvfrom.
func (s *sockSource) read(p []byte, wait bool) (int, error) {
	s.p = p
	err := s.call(false, wait)
	s.p = nil
	if err != nil {
		return 0, err
	}
	if s.n == 0 {
		return 0, io.EOF
	}
	return s.n, nil
}

// call makes one read of the socket through the poller, recvmmsg into
// msgs if batch, else recvfrom into p, and leaves its count in n. It
// returns errWouldBlock if nothing was ready and the caller does not
// wait.
func (s *sockSource) call(batch, wait bool) error {
	s.batch, s.wait = batch, wait
	err := s.rc.Read(s.recvFn)
	switch {
	case err != nil:
		return err
	case s.errno == unix.EAGAIN:
		return errWouldBlock
	case s.errno != 0 && batch:
		return os.NewSyscallError("recvmmsg", s.errno)
	case s.errno != 0:
		return os.NewSyscallError("recvfrom", s.errno)
	}
	return nil
}

// recv is the function call hands to syscall.RawConn.Read: it returns
// false, to wait for the socket, only when the caller waits and nothing
// is ready.
func (s *sockSource) recv(fd uintptr) bool {
	for {
		var n uintptr
		var errno unix.Errno
		if s.batch {
			n, _, errno = unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.msgs[0])),
				uintptr(len(s.msgs)), unix.MSG_DONTWAIT, 0, 0)
		} else {
			n, _, errno = unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&s.p[0])),
				uintptr(len(s.p)), unix.MSG_DONTWAIT, 0, 0)
		}
		if errno == unix.EINTR {
			continue
		}
		if errno == unix.EAGAIN && s.wait {
			return false
		}
		s.n, s.errno = int(n), errno
		return true
	}
}

// readMsgs implements source with recvmmsg.
func (s *sockSource) readMsgs(p []byte, size int, lens []int, wait bool) (int, error) {
	if s.eof {
		return 0, io.EOF
	}
	if len(s.msgs) != len(lens) {
		s.msgs = make([]rawfile.MMsgHdr, len(lens))
		s.iovs = make([]unix.Iovec, len(lens))
	}
	for k := range s.msgs {
		s.iovs[k].Base = &p[k*size]
		s.iovs[k].SetLen(size)
		s.msgs[k] = rawfile.MMsgHdr{}
		s.msgs[k].Msg.Iov = &s.iovs[k]
		s.msgs[k].Msg.SetIovlen(1)
	}
	if err := s.call(true, wait); err != nil {
		return 0, err
	}
	for k := range s.n {
		lens[k] = int(s.msgs[k].Len)
		if s.msgs[k].Msg.Flags&unix.MSG_TRUNC != 0 {
			lens[k] = size + 1
		}
		if lens[k] == 0 && s.seqpacket {
			// The end: what came before it is delivered first.
			s.eof = true
			if k == 0 {
				return 0, io.EOF
			}
			return k, nil
		}
	}
	return s.n, nil
}
