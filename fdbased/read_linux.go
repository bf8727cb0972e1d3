//go:build linux

package fdbased

import (
	"runtime"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// reader is one fd's dispatch loop: it waits for frames, reads a batch of
// them from its source into its buffers, and delivers them as one batch,
// until dispatch is stopped or the fd ends or fails. One batch's path, top
// to bottom:
//
//	run --> read: wait (source.wait), refill, source.read
//	    --> deliver: batch.start; per frame rxBufs.deliver
//	        (batch.deliver or batch.deliverVNet: parseFrame, then
//	        DeliverFragments or DeliverNetworkPacket); batch.end (Flush)
//
// A reader is used by its fd's dispatch goroutine only.
type reader struct {
	e      *Endpoint
	l      *link // the fd it reads
	queue  int   // the fd's index in Options.FDs: its receive queue
	stopFD int
	bufs   rxBufs
	// src reads the fd with recvmmsg or read(2); run reads it with
	// io_uring instead where l.planned says so and the ring can be set up.
	src source
	// vnetDrops counts the packets the kernel dropped for want of a
	// virtio_net_hdr; nil without Options.VNetHdr.
	vnetDrops *counters
	b         batch // the current batch, kept here so it is not allocated
}

// newReader returns a reader of l, receive queue queue, with room for
// batch frames per batch.
func newReader(e *Endpoint, l *link, queue, stopFD, batch int) *reader {
	r := &reader{e: e, l: l, queue: queue, stopFD: stopFD, bufs: newRxBufs(batch, e.vnet)}
	if e.vnet {
		r.vnetDrops = &e.stats
	}
	if l.isSocket && l.planned.Source == SourceRecvmmsg {
		r.src = newMMsgSource(l.fd, stopFD)
	} else {
		r.src = newReadSource(l.fd, stopFD, l.isSocket, r.vnetDrops)
	}
	return r
}

// run reads and delivers batches until dispatch is stopped, when it
// returns nil, or until the fd ends or fails, when it returns why. Either
// way it frees every view it holds.
func (r *reader) run() tcpip.Error {
	defer r.bufs.free()
	src, ring := r.src, false
	if r.l.planned.Source == SourceIOUring {
		// Completions are task work of the submitting thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if u := r.startRing(); u != nil {
			defer u.close()
			src, ring = u, true
		}
	}
	for {
		n, err := r.read(src)
		if n == 0 {
			return err
		}
		if eof := r.deliver(src, n, ring); eof {
			return &tcpip.ErrClosedForReceive{}
		}
	}
}

// startRing sets up the io_uring that reads the fd, or returns nil and
// reports that read(2) reads it instead, and why, in the fd's
// SourceChoice. The probe at New found io_uring usable, but a ring may
// still fail to be set up (locked memory, a ring of this size).
func (r *reader) startRing() *uringSource {
	r.bufs.refill(r.e.bufSize(), r.e.hdrSize) // the ring's buffers are as large
	u, err := r.e.sys.newRing(r.l.fd, r.stopFD, len(r.bufs.msgs), r.bufs.size, &r.e.stopping)
	c := *r.l.choice.Load()
	if err != nil {
		c.Source, c.Why, c.Fallback = SourceRead, whyRingSetup+err.Error(), err
		r.l.choice.Store(&c)
		return nil
	}
	if c.Fallback != nil { // a ring failed before, at an earlier Attach
		r.l.choice.Store(&r.l.planned)
	}
	return u
}

// read waits until the fd has frames, then reads every frame ready, up to
// the batch size, and returns how many it read. It returns 0 when
// dispatch is stopped (with a nil error) or the fd failed (with the
// error). EINTR is retried; EAGAIN is waited on.
func (r *reader) read(src source) (int, tcpip.Error) {
	hup := false
	for {
		if r.e.stopping.Load() {
			return 0, nil
		}
		r.bufs.refill(r.e.bufSize(), r.e.hdrSize) // again after a wait: the MTU may have changed
		n, errno := src.read(&r.bufs)
		if n > 0 {
			return n, nil
		}
		switch {
		case errno == unix.EINTR || vnetDropped(r.vnetDrops, errno):
			continue
		case errno == unix.EAGAIN || errno == 0:
		default:
			return 0, tcpip.TranslateErrno(errno)
		}
		if hup {
			// The fd hung up or failed, yet it has nothing to read:
			// it never will.
			return 0, &tcpip.ErrConnectionReset{}
		}
		stopped, h, errno := src.wait()
		if stopped {
			return 0, nil
		}
		if errno != 0 && errno != unix.EINTR {
			return 0, tcpip.TranslateErrno(errno)
		}
		hup = h
	}
}

// deliver hands the n frames read to the dispatcher as one batch, read
// through io_uring if ring is set. It reports whether the fd reached its
// end, after which nothing more can be read.
func (r *reader) deliver(src source, n int, ring bool) (eof bool) {
	b := &r.b
	b.start(r.e, r.queue, ring)
	for k := range n {
		length, truncated := r.bufs.frame(k)
		if length == 0 && !truncated && (eof || src.atEOF()) {
			eof = true
			continue
		}
		r.bufs.deliver(k, length, truncated, b)
	}
	b.end()
	return eof
}
