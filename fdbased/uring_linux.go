package fdbased

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// uringSource reads a non-socket fd (TAP, TUN) with one io_uring
// multishot read (SourceIOUring): the kernel reads each frame into a
// buffer of a provided-buffer ring as it arrives, and a batch costs one
// io_uring_enter instead of one read(2) per frame, the system call that
// dominates a TAP reader's cost. It needs Linux 6.7
// (IORING_OP_READ_MULTISHOT). Each frame is copied from the ring into its
// pooled view, so the rest of the data path is the same.
type uringSource struct {
	ring     *uring
	stopping *atomic.Bool // the endpoint's: dispatch is being stopped
}

// newURingSource sets up a ring reading fd into bufs buffers of bufSize
// bytes, woken also when stopFD becomes readable.
func newURingSource(fd, stopFD, batch, bufSize int, stopping *atomic.Bool) (*uringSource, error) {
	ring, err := newURing(fd, stopFD, uringBuffers(batch), bufSize)
	if err != nil {
		return nil, err
	}
	return &uringSource{ring: ring, stopping: stopping}, nil
}

// read implements source.
func (s *uringSource) read(b *rxBufs) (int, unix.Errno) { return s.ring.reap(b) }

// wait implements source.
func (s *uringSource) wait() (stopped, hup bool, errno unix.Errno) {
	// The stop eventfd's completion wakes the ring, but reap may have
	// taken it already, just after stopping was set: look first.
	if s.stopping.Load() {
		return true, false, 0
	}
	return false, false, s.ring.wait()
}

// atEOF implements source: a read of 0 bytes is always the end.
func (*uringSource) atEOF() bool { return true }

// close releases the ring.
func (s *uringSource) close() { s.ring.close() }

// uring is an io_uring with a multishot read of one fd into a ring of
// provided buffers, and a poll of the stop eventfd.
//
// A uring belongs to one dispatch goroutine, locked to its OS thread:
// completions arrive as task work of the thread that submitted.
type uring struct {
	fd  int // the ring's
	src int // the fd it reads

	ringMem, sqeMem, bufRingMem, bufMem []byte // ringMem: SQ and CQ rings, one mapping

	sqTail, sqMask *uint32
	sqArray        []uint32
	sqes           []uringSQE
	pending        uint32 // SQEs queued since the last io_uring_enter

	cqHead, cqTail, cqMask *uint32
	cqes                   []uringCQE

	bufTail uint16 // provided-buffer ring tail, ours to advance
	bufs    int    // number of buffers, a power of two
	bufSize int
	rearm   bool // the multishot read ended: submit it again
}

// io_uring ABI (include/uapi/linux/io_uring.h).
const (
	sysIOUringSetup    = 425
	sysIOUringEnter    = 426
	sysIOUringRegister = 427

	uringSetupCQSize     = 1 << 3
	uringFeatSingleMmap  = 1 << 0
	uringOffSQRing       = 0
	uringOffSQEs         = 0x10000000
	uringEnterGetEvents  = 1 << 0
	uringOpPollAdd       = 6
	uringOpAsyncCancel   = 14
	uringOpReadMultishot = 49
	uringSQEBufferSelect = 1 << 5
	uringCQEFMore        = 1 << 1
	uringCQEBufferShift  = 16
	uringRegisterPbuf    = 22
	uringRegisterProbe   = 8
	uringOpSupported     = 1 << 0

	uringDataRead   uint64 = 1 // user_data of the multishot read
	uringDataStop   uint64 = 2 // user_data of the poll on the stop eventfd
	uringDataCancel uint64 = 3 // user_data of the read's cancellation

	uringBufGroup = 0
)

type uringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

type uringSQE struct {
	opcode, flags uint8
	ioprio        uint16
	fd            int32
	off, addr     uint64
	len, opFlags  uint32
	userData      uint64
	bufGroup      uint16
	personality   uint16
	spliceFDIn    int32
	addr3, pad    uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

type uringBufReg struct {
	ringAddr    uint64
	ringEntries uint32
	bgid, flags uint16
	resv        [3]uint64
}

// newURing sets up a ring reading fd into bufs buffers of bufSize bytes,
// woken also when stopFD becomes readable.
func newURing(fd, stopFD, bufs, bufSize int) (*uring, error) {
	var p uringParams
	p.flags = uringSetupCQSize
	p.cqEntries = uint32(2 * bufs)
	rfd, _, errno := unix.Syscall(sysIOUringSetup, 4, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	u := &uring{fd: int(rfd), src: fd, bufs: bufs, bufSize: bufSize}
	if err := u.setup(&p, fd, stopFD); err != nil {
		u.close()
		return nil, err
	}
	return u, nil
}

func (u *uring) setup(p *uringParams, fd, stopFD int) error {
	if err := probeOps(u.fd); err != nil {
		return err
	}
	if err := u.mapRings(p); err != nil {
		return err
	}
	if err := u.registerBuffers(); err != nil {
		return err
	}
	u.submitRead()
	u.push(uringSQE{opcode: uringOpPollAdd, fd: int32(stopFD), opFlags: unix.POLLIN, userData: uringDataStop})
	return nil
}

func (u *uring) mapRings(p *uringParams) error {
	if p.features&uringFeatSingleMmap == 0 {
		return fmt.Errorf("io_uring without IORING_FEAT_SINGLE_MMAP")
	}
	size := max(int(p.sqOff.array)+int(p.sqEntries)*4, int(p.cqOff.cqes)+int(p.cqEntries)*int(unsafe.Sizeof(uringCQE{})))
	var err error
	if u.ringMem, err = unix.Mmap(u.fd, uringOffSQRing, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring rings: %w", err)
	}
	if u.sqeMem, err = unix.Mmap(u.fd, uringOffSQEs, int(p.sqEntries)*int(unsafe.Sizeof(uringSQE{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return fmt.Errorf("io_uring SQEs: %w", err)
	}
	u32 := func(mem []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&mem[off])) }
	u.sqTail, u.sqMask = u32(u.ringMem, p.sqOff.tail), u32(u.ringMem, p.sqOff.ringMask)
	u.sqArray = unsafe.Slice(u32(u.ringMem, p.sqOff.array), p.sqEntries)
	u.sqes = unsafe.Slice((*uringSQE)(unsafe.Pointer(&u.sqeMem[0])), p.sqEntries)
	u.cqHead, u.cqTail, u.cqMask = u32(u.ringMem, p.cqOff.head), u32(u.ringMem, p.cqOff.tail), u32(u.ringMem, p.cqOff.ringMask)
	u.cqes = unsafe.Slice((*uringCQE)(unsafe.Pointer(&u.ringMem[p.cqOff.cqes])), p.cqEntries)
	return nil
}

// probeURing reports why this process cannot read with io_uring, or nil
// if it can: io_uring_setup fails where the kernel.io_uring_disabled
// sysctl or a seccomp profile forbids io_uring (EPERM, ENOSYS), and a
// kernel before 6.7 has no multishot read. New calls it once, and only
// for an endpoint with a fd that could use it.
func probeURing() error {
	var p uringParams
	fd, _, errno := unix.Syscall(sysIOUringSetup, 1, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return fmt.Errorf("io_uring_setup: %w", errno)
	}
	defer unix.Close(int(fd))
	return probeOps(int(fd))
}

// probeOps checks that the kernel knows the multishot read (Linux 6.7)
// on ring ringFD: an older one would fail the read in its first
// completion instead.
func probeOps(ringFD int) error {
	const ops = 256
	var buf [16 + ops*8]byte // struct io_uring_probe and its ops
	if _, _, errno := unix.Syscall6(sysIOUringRegister, uintptr(ringFD), uringRegisterProbe, uintptr(unsafe.Pointer(&buf[0])), ops, 0, 0); errno != 0 {
		return fmt.Errorf("io_uring probe: %w", errno)
	}
	lastOp, flags := buf[0], buf[16+uringOpReadMultishot*8+2]
	if lastOp < uringOpReadMultishot || flags&uringOpSupported == 0 {
		return errors.New("io_uring has no multishot read (Linux 6.7)")
	}
	return nil
}

// registerBuffers gives the kernel a ring of buffers to read frames into.
func (u *uring) registerBuffers() error {
	var err error
	if u.bufRingMem, err = unix.Mmap(-1, 0, u.bufs*16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("io_uring buffer ring: %w", err)
	}
	if u.bufMem, err = unix.Mmap(-1, 0, u.bufs*u.bufSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err != nil {
		return fmt.Errorf("io_uring buffers: %w", err)
	}
	reg := uringBufReg{ringAddr: uint64(uintptr(unsafe.Pointer(&u.bufRingMem[0]))), ringEntries: uint32(u.bufs), bgid: uringBufGroup}
	if _, _, errno := unix.Syscall6(sysIOUringRegister, uintptr(u.fd), uringRegisterPbuf, uintptr(unsafe.Pointer(&reg)), 1, 0, 0); errno != 0 {
		return fmt.Errorf("io_uring provided buffers: %w", errno)
	}
	for bid := range u.bufs {
		u.addBuffer(uint16(bid))
	}
	u.publishBuffers()
	return nil
}

// addBuffer puts buffer bid back in the ring; publishBuffers makes it
// visible to the kernel.
func (u *uring) addBuffer(bid uint16) {
	e := u.bufRingMem[int(u.bufTail)&(u.bufs-1)*16:]
	*(*uint64)(unsafe.Pointer(&e[0])) = uint64(uintptr(unsafe.Pointer(&u.bufMem[int(bid)*u.bufSize])))
	*(*uint32)(unsafe.Pointer(&e[8])) = uint32(u.bufSize)
	*(*uint16)(unsafe.Pointer(&e[12])) = bid
	u.bufTail++
}

// publishBuffers stores the ring's tail (a u16 at byte 14, over the
// first entry's reserved field) with release order. Go has no 16-bit
// atomic store, so it rewrites the 32-bit word it shares with the first
// entry's buffer ID, which only this goroutine writes.
func (u *uring) publishBuffers() {
	w := (*uint32)(unsafe.Pointer(&u.bufRingMem[12]))
	atomic.StoreUint32(w, atomic.LoadUint32(w)&0xffff|uint32(u.bufTail)<<16)
}

// push queues an SQE for the next io_uring_enter.
func (u *uring) push(sqe uringSQE) {
	tail := *u.sqTail
	i := tail & *u.sqMask
	u.sqes[i] = sqe
	u.sqArray[i] = i
	atomic.StoreUint32(u.sqTail, tail+1)
	u.pending++
}

// submitRead queues the multishot read of the fd.
func (u *uring) submitRead() {
	u.push(uringSQE{opcode: uringOpReadMultishot, flags: uringSQEBufferSelect, fd: int32(u.src), userData: uringDataRead, bufGroup: uringBufGroup})
}

// reap copies the frames the kernel has read, up to the batch size, into
// b's views and returns how many, or EAGAIN when there are none. A read
// of 0 bytes is the end of the file, as with read(2).
func (u *uring) reap(b *rxBufs) (int, unix.Errno) {
	n := 0
	head, tail := *u.cqHead, atomic.LoadUint32(u.cqTail)
	var errno unix.Errno
	for ; head != tail && n < len(b.msgs); head++ {
		c := u.cqes[head&*u.cqMask]
		if c.userData != uringDataRead {
			continue // the stop eventfd: the loop checks stopping
		}
		if c.flags&uringCQEFMore == 0 {
			u.rearm = true
		}
		if c.res < 0 {
			if e := unix.Errno(-c.res); e != unix.ENOBUFS && e != unix.EINTR && e != unix.EAGAIN {
				errno = e
				head++
				break
			}
			continue
		}
		bid := uint16(c.flags >> uringCQEBufferShift)
		length := int(c.res)
		// A full buffer may hold part of a larger frame (after an MTU
		// change, buffers keep their size): drop it as oversized.
		b.put(n, u.bufMem[int(bid)*u.bufSize:][:length], length == u.bufSize)
		u.addBuffer(bid)
		n++
		if length == 0 {
			head++
			break
		}
	}
	atomic.StoreUint32(u.cqHead, head)
	u.publishBuffers()
	if u.rearm {
		u.rearm = false
		u.submitRead()
	}
	if n > 0 {
		return n, 0
	}
	if errno != 0 {
		return 0, errno
	}
	return 0, unix.EAGAIN
}

// wait submits what is queued and blocks until a completion arrives.
func (u *uring) wait() unix.Errno {
	_, _, errno := unix.Syscall6(sysIOUringEnter, uintptr(u.fd), uintptr(u.pending), 1, uringEnterGetEvents, 0, 0)
	if errno == 0 {
		u.pending = 0
	}
	return errno
}

// close cancels the read, waits (boundedly) until the kernel has let go of
// the buffers, and releases the ring and its memory.
func (u *uring) close() {
	if u.fd < 0 {
		return
	}
	if u.sqes != nil {
		u.push(uringSQE{opcode: uringOpAsyncCancel, addr: uringDataRead, userData: uringDataCancel})
		readDone, cancelDone := false, false
		for range 16 {
			if u.wait() != 0 {
				break
			}
			head, tail := *u.cqHead, atomic.LoadUint32(u.cqTail)
			for ; head != tail; head++ {
				c := u.cqes[head&*u.cqMask]
				switch c.userData {
				case uringDataRead:
					readDone = readDone || c.flags&uringCQEFMore == 0
				case uringDataCancel:
					cancelDone = true
					readDone = readDone || c.res == -int32(unix.ENOENT)
				}
			}
			atomic.StoreUint32(u.cqHead, head)
			if readDone && cancelDone {
				break
			}
		}
	}
	unix.Close(u.fd)
	u.fd = -1
	for _, m := range [][]byte{u.sqeMem, u.ringMem, u.bufRingMem, u.bufMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	u.sqeMem, u.ringMem, u.bufRingMem, u.bufMem = nil, nil, nil, nil
	u.sqes = nil
}

// uringBuffers returns how many ring buffers a reader with batch views
// gets: two batches' worth, a power of two as the kernel requires.
func uringBuffers(batch int) int {
	n := 1
	for n < 2*batch {
		n <<= 1
	}
	return n
}
