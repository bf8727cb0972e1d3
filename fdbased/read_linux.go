//go:build linux

package fdbased

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// reader reads one fd in batches: recvmmsg for a socket, read until EAGAIN
// for anything else. Like gVisor's recvMMsgDispatcher it allocates its
// message headers and iovecs once and, after each batch, replaces only the
// views it handed off, so a steady stream costs no allocation but the
// pooled views themselves.
//
// A reader is used by its fd's dispatch goroutine only.
type reader struct {
	e        *Endpoint
	fd       int
	isSocket bool
	// ring, while run runs with Options.IOUring on a non-socket fd, reads
	// frames with one multishot read instead of read(2) per frame.
	ring  *uring
	queue int // the fd's index in Options.FDs: its receive queue

	// size is the length of every view in views, set from the MTU by
	// refill.
	size int
	// views holds one view per frame of a batch; nil where the frame's
	// view was handed off. msgs[k] points at its iovecs,
	// iovs[k*r.iovsPerMsg():].
	views []*buffer.View
	iovs  []unix.Iovec
	// vnet (Options.VNetHdr): each message reads a virtio_net_hdr into
	// hdrs[k], then the frame into views[k] and, past its end (a TCP
	// super-packet), into spares[k], of spareSize bytes (about 64 KiB: a
	// batch's spares hold 4 MiB of pooled chunks). A spare is replaced only
	// when a frame reached it.
	vnet      bool
	hdrs      [][vnetHdrSize]byte
	spares    []*buffer.View
	spareSize int
	// msgs are recvmmsg's message headers. For a non-socket, read fills
	// in Len and clears Msg.Flags, so that dispatch reads both alike.
	msgs []rawfile.MMsgHdr
	// pfds are polled while the fd has nothing to read: the endpoint's
	// stop eventfd, then the fd.
	pfds [2]unix.PollFd
	// hup is polled, without waiting, to tell a socket's end of file
	// from an empty message.
	hup [1]unix.PollFd
	// t is the current batch's target, kept here so it is not allocated.
	t target
}

// newReader returns a reader of fd with room for batch frames per batch.
func newReader(e *Endpoint, fd int, isSocket bool, stopFD int, batch int) *reader {
	r := &reader{
		e:        e,
		fd:       fd,
		isSocket: isSocket,
		views:    make([]*buffer.View, batch),
		vnet:     e.vnet,
		msgs:     make([]rawfile.MMsgHdr, batch),
		pfds: [2]unix.PollFd{
			{Fd: int32(stopFD), Events: unix.POLLIN},
			{Fd: int32(fd), Events: unix.POLLIN},
		},
		hup: [1]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}},
	}
	per := r.iovsPerMsg()
	r.iovs = make([]unix.Iovec, batch*per)
	for k := range r.msgs {
		r.msgs[k].Msg.Iov = &r.iovs[k*per]
		r.msgs[k].Msg.SetIovlen(per)
	}
	if r.vnet {
		r.hdrs = make([][vnetHdrSize]byte, batch)
		r.spares = make([]*buffer.View, batch)
		for k := range r.hdrs {
			r.iovs[k*per].Base = &r.hdrs[k][0]
			r.iovs[k*per].SetLen(vnetHdrSize)
		}
	}
	return r
}

// run reads and dispatches batches until dispatch is stopped, when it
// returns nil, or until the fd ends or fails, when it returns why. Either
// way it releases every view it holds.
func (r *reader) run() tcpip.Error {
	defer r.release()
	if r.e.iouring && !r.isSocket {
		// Completions are task work of the submitting thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		r.refill()
		ring, err := newURing(r.fd, int(r.pfds[0].Fd), uringBuffers(len(r.views)), r.size)
		if err == nil {
			r.ring = ring
			defer func() {
				r.ring.close()
				r.ring = nil
			}()
		}
		// Without io_uring (older kernel, seccomp), read(2) does.
	}
	for {
		n, err := r.read()
		if n == 0 {
			return err
		}
		if eof := r.dispatch(n); eof {
			return &tcpip.ErrClosedForReceive{}
		}
	}
}

// read waits until the fd has frames, then reads every frame ready, up to
// the batch size, and returns how many it read. It returns 0 when
// dispatch is stopped (with a nil error) or the fd failed (with the
// error). EINTR is retried; EAGAIN is waited on.
func (r *reader) read() (int, tcpip.Error) {
	hup := false
	for {
		if r.e.stopping.Load() {
			return 0, nil
		}
		r.refill() // again after a wait: the MTU may have changed
		n, errno := r.readReady()
		if n > 0 {
			return n, nil
		}
		switch {
		case errno == unix.EINTR || r.vnetDropped(errno):
			continue
		case errno == unix.EAGAIN || errno == 0:
		default:
			return 0, tcpip.TranslateErrno(errno)
		}
		if hup {
			// poll said the fd hung up or failed, yet it has
			// nothing to read: it never will.
			return 0, &tcpip.ErrConnectionReset{}
		}
		stopped, errno := r.wait(&hup)
		if stopped {
			return 0, nil
		}
		if errno != 0 && errno != unix.EINTR {
			return 0, tcpip.TranslateErrno(errno)
		}
	}
}

// readReady reads the frames the fd has ready, up to the batch size,
// without blocking. It returns how many it read, and the error that
// stopped it when that is 0. A non-socket's end of file is a frame of
// length 0, and the last of the batch.
func (r *reader) readReady() (int, unix.Errno) {
	if r.ring != nil {
		return r.ring.reap(r)
	}
	if r.isSocket {
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(r.fd),
			uintptr(unsafe.Pointer(&r.msgs[0])), uintptr(len(r.msgs)), unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 {
			return 0, errno
		}
		return int(n), 0
	}
	for k, drops := 0, 0; k < len(r.views); {
		n, errno := r.readOne(k)
		if drops < len(r.views) && r.vnetDropped(errno) {
			drops++ // bounded, should the error not consume a packet
			continue
		}
		if errno != 0 {
			return k, errno
		}
		r.msgs[k].Len = uint32(n)
		r.msgs[k].Msg.Flags = 0
		k++
		if n == 0 {
			return k, 0
		}
	}
	return len(r.views), 0
}

// iovsPerMsg is the number of iovecs each message reads into: the view,
// or with vnet the header, the view and the spare.
func (r *reader) iovsPerMsg() int {
	if r.vnet {
		return 3
	}
	return 1
}

// vnetDropped reports whether errno, from a read, says that the kernel
// dropped a packet it could not describe in a virtio_net_hdr (a GSO type
// the device was not given, in tun_put_user or packet_rcv_vnet), and then
// counts it as a frame dropped for its header: the next read goes on.
func (r *reader) vnetDropped(errno unix.Errno) bool {
	if !r.vnet || errno != unix.EINVAL {
		return false
	}
	r.e.stats.frames.Add(1) // frames first: see counters.snapshot
	r.e.stats.vnet.Add(1)
	return true
}

// readOne reads one frame into message k's iovecs, retrying on EINTR.
func (r *reader) readOne(k int) (int, unix.Errno) {
	for {
		var n uintptr
		var errno unix.Errno
		if per := r.iovsPerMsg(); per == 1 {
			n, _, errno = unix.RawSyscall(unix.SYS_READ, uintptr(r.fd),
				uintptr(unsafe.Pointer(r.iovs[k].Base)), uintptr(r.iovs[k].Len))
		} else {
			n, _, errno = unix.RawSyscall(unix.SYS_READV, uintptr(r.fd),
				uintptr(unsafe.Pointer(&r.iovs[k*per])), uintptr(per))
		}
		if errno != unix.EINTR {
			return int(n), errno
		}
	}
}

// wait blocks until the fd is readable or dispatch is being stopped, and
// reports which. It sets *hup when the fd reports a hang-up or an error.
func (r *reader) wait(hup *bool) (stopped bool, errno unix.Errno) {
	if r.ring != nil {
		// The stop eventfd's completion wakes the ring, but reap may have
		// taken it already, just after stopping was set: look first.
		if r.e.stopping.Load() {
			return true, 0
		}
		return false, r.ring.wait()
	}
	r.pfds[0].Revents, r.pfds[1].Revents = 0, 0
	if _, err := unix.Poll(r.pfds[:], -1); err != nil {
		errno, ok := err.(unix.Errno)
		if !ok {
			errno = unix.EINVAL
		}
		return false, errno
	}
	if r.pfds[0].Revents != 0 {
		return true, 0
	}
	rev := r.pfds[1].Revents
	if rev&unix.POLLNVAL != 0 {
		return false, unix.EBADF
	}
	*hup = rev&(unix.POLLHUP|unix.POLLERR) != 0
	return false, 0
}

// atEOF reports whether a message of length 0 from a socket means its
// peer is gone (a seqpacket socket then returns one empty message per
// call) rather than an empty datagram. Non-socket reads of 0 are always
// the end.
func (r *reader) atEOF() bool {
	if !r.isSocket {
		return true
	}
	r.hup[0].Revents = 0
	if _, err := unix.Poll(r.hup[:], 0); err != nil {
		return false
	}
	return r.hup[0].Revents&(unix.POLLHUP|unix.POLLRDHUP|unix.POLLERR|unix.POLLNVAL) != 0
}

// dispatch delivers the n frames of a batch and ends the batch. It reports
// whether the fd reached its end, after which nothing more can be read.
func (r *reader) dispatch(n int) (eof bool) {
	t := &r.t
	r.e.loadTarget(t, r.queue)
	var c batchCount
	for k := range n {
		length := int(r.msgs[k].Len)
		truncated := r.msgs[k].Msg.Flags&unix.MSG_TRUNC != 0
		if length == 0 && !truncated && (eof || r.atEOF()) {
			eof = true
			continue
		}
		if r.vnet {
			hdr := r.hdrs[k][:min(length, vnetHdrSize)]
			tookV, tookSpare := r.e.deliverVNet(t, hdr, r.views[k], r.spares[k], length-len(hdr), truncated, &c)
			if tookV {
				r.views[k] = nil
			}
			if tookSpare {
				r.spares[k] = nil
			}
			continue
		}
		if r.e.deliver(t, r.views[k], length, truncated, &c) {
			r.views[k] = nil
		}
	}
	r.e.endBatch(t, &c)
	if r.ring != nil && c.frames > 0 {
		r.e.stats.ringBatches.Add(1)
	}
	if t.d != nil {
		r.e.inBatch.Add(-1)
	}
	*t = target{} // hold no dispatcher between batches
	return eof
}

// refill gives every message of the next read a view: it replaces the
// views the last batch handed off, and all of them if the MTU changed.
func (r *reader) refill() {
	if size := r.e.bufSize(); size != r.size {
		r.release()
		r.size = size
		// A super-packet's bytes past the first view; at least one byte,
		// so that a frame that fills the view and spills is known as one.
		r.spareSize = max(1, maxGSOFrame(r.e.hdrSize)+1-size)
	}
	// views[k]'s iovec in message k: after the header's with vnet, and a
	// spare's follows it.
	per, at := r.iovsPerMsg(), 0
	if r.vnet {
		at = 1
	}
	for k, v := range r.views {
		if v == nil {
			v = buffer.NewViewSize(r.size)
			r.views[k] = v
			r.iovs[k*per+at].Base = &v.AsSlice()[0]
			r.iovs[k*per+at].SetLen(r.size)
		}
		if r.vnet && r.spares[k] == nil {
			sp := buffer.NewViewSize(r.spareSize)
			r.spares[k] = sp
			r.iovs[k*per+at+1].Base = &sp.AsSlice()[0]
			r.iovs[k*per+at+1].SetLen(r.spareSize)
		}
	}
}

// release returns every view the reader holds to the pool.
func (r *reader) release() {
	for _, views := range [][]*buffer.View{r.views, r.spares} {
		for k, v := range views {
			if v != nil {
				v.Release()
				views[k] = nil
			}
		}
	}
}
