//go:build linux

package fdbased

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gfdbased "gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/linkgate"
)

// maxBatchSize is the most messages one recvmmsg or sendmmsg takes: the
// kernel caps vlen at UIO_MAXIOV.
const maxBatchSize = rawfile.MaxIovs

// endpointSys is the Linux part of an Endpoint.
type endpointSys struct {
	links []link
	// stopFD is an eventfd that is readable while dispatch is being
	// stopped; every dispatch loop polls it with its fd.
	stopFD int
	tx     writer
	// newRing sets up a fd's io_uring: newURingSource, or a test's.
	newRing func(fd, stopFD, batch, bufSize int, stopping *atomic.Bool) (*uringSource, error)
}

// link is one fd the endpoint reads and writes.
type link struct {
	fd       int
	isSocket bool
	// planned is the source New chose for fd. With io_uring, fd is read
	// through a ring if one can be set up when dispatch starts, and with
	// read(2) if not.
	planned SourceChoice
	// choice is what Sources reports for fd: planned, or read(2) and
	// why after the dispatch goroutine failed to set up a ring.
	choice atomic.Pointer[SourceChoice]
	r      *reader // reads fd; used only by fd's dispatch goroutine
}

// newEndpoint checks opts and builds an Endpoint, with every buffer the
// dispatch loops need except the views, which they take on their first
// batch.
func newEndpoint(opts *Options) (*Endpoint, error) {
	return newEndpointProbe(opts, probeURing)
}

// newEndpointProbe is newEndpoint with probe telling whether io_uring can
// be used: tests give one that says it cannot.
func newEndpointProbe(opts *Options, probe func() error) (*Endpoint, error) {
	if err := checkOptions(opts); err != nil {
		return nil, err
	}
	e := &Endpoint{
		batchSize: opts.BatchSize,
		vnet:      opts.VNetHdr,
		closedFn:  opts.ClosedFunc,
		addr:      opts.Address,
		mtu:       opts.MTU,
	}
	e.gate = linkgate.New(linkgate.Hooks{Start: e.start, Stop: e.stop, Finish: e.finishStop})
	if e.batchSize == 0 {
		e.batchSize = DefaultBatchSize
	}
	if opts.EthernetHeader {
		e.hdrSize = header.EthernetMinimumSize
		e.caps |= stack.CapabilityResolutionRequired
	}
	if opts.RXChecksumOffload {
		e.caps |= stack.CapabilityRXChecksumOffload
	}
	if opts.TXChecksumOffload {
		e.caps |= stack.CapabilityTXChecksumOffload
	}
	links, err := planLinks(opts, probe)
	if err != nil {
		return nil, err
	}
	e.sys.links = links
	stopFD, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fdbased: eventfd: %w", err)
	}
	e.sys.stopFD = stopFD
	e.sys.newRing = newURingSource
	e.sys.tx.vnet, e.sys.tx.linkHdr = e.vnet, e.hdrSize
	for i := range e.sys.links {
		l := &e.sys.links[i]
		l.r = newReader(e, l, i, stopFD, e.batchSize)
	}
	return e, nil
}

// planLinks checks each of opts.FDs and chooses how it is read, probing
// io_uring once, and only if a fd could use it. The links join one
// PACKET_FANOUT group if they are packet sockets.
func planLinks(opts *Options, probe func() error) ([]link, error) {
	links := make([]link, len(opts.FDs))
	ringErr := errNotProbed
	for i, fd := range opts.FDs {
		isSocket, err := checkFD(fd)
		if err != nil {
			return nil, err
		}
		if ringErr == errNotProbed && !isSocket && !opts.VNetHdr && (opts.Source == SourceAuto || opts.Source == SourceIOUring) {
			ringErr = probe()
		}
		c, err := chooseSource(fd, isSocket, opts, ringErr)
		if err != nil {
			return nil, err
		}
		l := &links[i]
		l.fd, l.isSocket, l.planned = fd, isSocket, c
		l.choice.Store(&l.planned)
	}
	if err := joinFanout(links); err != nil {
		return nil, err
	}
	return links, nil
}

// checkOptions says what is wrong with opts, if anything.
func checkOptions(opts *Options) error {
	switch {
	case opts == nil:
		return fmt.Errorf("fdbased: nil options: %w", ErrInvalidOptions)
	case len(opts.FDs) == 0:
		return fmt.Errorf("fdbased: no FDs: %w", ErrInvalidOptions)
	case opts.MTU == 0:
		return fmt.Errorf("fdbased: MTU 0: %w", ErrInvalidOptions)
	case opts.BatchSize < 0 || opts.BatchSize > maxBatchSize:
		return fmt.Errorf("fdbased: BatchSize %d not in [0, %d]: %w", opts.BatchSize, maxBatchSize, ErrInvalidOptions)
	case opts.Source >= numSources:
		return fmt.Errorf("fdbased: Source %v unknown: %w", opts.Source, ErrInvalidOptions)
	case opts.VNetHdr && opts.Source == SourceIOUring:
		return fmt.Errorf("fdbased: VNetHdr with SourceIOUring: %w", ErrInvalidOptions)
	case opts.EthernetHeader && opts.Address != "" && len(opts.Address) != header.EthernetAddressSize:
		return fmt.Errorf("fdbased: Address %q is %d bytes, want %d: %w", opts.Address, len(opts.Address), header.EthernetAddressSize, ErrInvalidOptions)
	}
	return nil
}

// errNotProbed stands for io_uring's probe before it has run.
var errNotProbed = errors.New("fdbased: io_uring not probed")

// chooseSource returns how fd is to be read under opts, or why it cannot
// be read the way opts forces. ringErr is why io_uring cannot be used
// (nil if it can); it is probed only for a fd that could use it.
func chooseSource(fd int, isSocket bool, opts *Options, ringErr error) (SourceChoice, error) {
	c := SourceChoice{FD: fd, Source: opts.Source, Why: whyForced}
	switch opts.Source {
	case SourceAuto:
	case SourceRecvmmsg:
		if !isSocket {
			return c, fmt.Errorf("fdbased: fd %d: SourceRecvmmsg reads sockets, and it is none: %w", fd, ErrInvalidOptions)
		}
		return c, nil
	case SourceRead:
		return c, nil
	case SourceIOUring:
		if isSocket {
			return c, fmt.Errorf("fdbased: fd %d: SourceIOUring reads non-sockets (TAP, TUN), and it is a socket: %w", fd, ErrInvalidOptions)
		}
		if ringErr != nil {
			return c, fmt.Errorf("fdbased: fd %d: SourceIOUring: %w", fd, ringErr)
		}
		return c, nil
	}
	switch {
	case isSocket:
		return SourceChoice{FD: fd, Source: SourceRecvmmsg, Why: whySocket}, nil
	case opts.VNetHdr:
		return SourceChoice{FD: fd, Source: SourceRead, Why: whyVNet}, nil
	case ringErr != nil:
		return SourceChoice{FD: fd, Source: SourceRead, Why: whyNoRing + ringErr.Error(), Fallback: ringErr}, nil
	}
	return SourceChoice{FD: fd, Source: SourceIOUring, Why: whyRing}, nil
}

// sources implements Endpoint.Sources.
func (s *endpointSys) sources() []SourceChoice {
	cs := make([]SourceChoice, len(s.links))
	for i := range s.links {
		cs[i] = *s.links[i].choice.Load()
	}
	return cs
}

// checkFD makes fd non-blocking and reports whether it is a socket. It
// refuses sockets that do not keep frame boundaries.
func checkFD(fd int) (isSocket bool, err error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return false, fmt.Errorf("fdbased: fd %d: set non-blocking: %w", fd, err)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if errors.Is(err, unix.ENOTSOCK) {
		return false, nil // a TAP or TUN device, a pipe, a character device
	}
	if err != nil {
		return false, fmt.Errorf("fdbased: fd %d: getsockopt SO_TYPE: %w", fd, err)
	}
	switch typ {
	case unix.SOCK_DGRAM, unix.SOCK_SEQPACKET, unix.SOCK_RAW:
		return true, nil
	}
	return false, fmt.Errorf("fdbased: fd %d: socket type %d does not keep frame boundaries: %w", fd, typ, ErrInvalidOptions)
}

// joinFanout puts several AF_PACKET sockets in one PACKET_FANOUT_HASH
// group, so that the kernel keeps each flow on one of them, as gVisor's
// fdbased does. One socket needs no group.
func joinFanout(links []link) error {
	if len(links) < 2 {
		return nil
	}
	id := int32(-1)
	for i := range links {
		l := &links[i]
		isPacket, err := gfdbased.IsPacketSocket(l.fd, l.isSocket)
		if err != nil {
			return fmt.Errorf("fdbased: fd %d: %w", l.fd, err)
		}
		if !isPacket {
			continue
		}
		if id < 0 {
			id, err = gfdbased.CreatePacketFanoutGroup(l.fd)
		} else {
			err = gfdbased.JoinPacketFanoutGroup(l.fd, id)
		}
		if err != nil {
			return fmt.Errorf("fdbased: fd %d: PACKET_FANOUT: %w", l.fd, err)
		}
	}
	return nil
}

// Attach implements stack.LinkEndpoint.Attach. A dispatcher starts one
// dispatch goroutine per fd, or, if they run, replaces the dispatcher
// from their next batch on. nil stops them and leaves the endpoint ready to
// be attached again. After Close, Attach does nothing.
//
// netstack calls Attach(nil) while holding its own lock, which a packet
// being delivered may be waiting for. So Attach(nil) waits for the
// dispatch goroutines only when no batch is being delivered; otherwise
// they stop in the background as soon as their batch is done, and Close
// waits for them (linkgate).
func (e *Endpoint) Attach(dispatcher stack.NetworkDispatcher) { e.gate.Attach(dispatcher) }

// start starts a dispatch goroutine per fd.
func (e *Endpoint) start() {
	for i := range e.sys.links {
		e.wg.Add(1)
		go e.dispatchLoop(&e.sys.links[i])
	}
}

// stop tells the dispatch goroutines to stop, through the eventfd every
// dispatch loop polls with its fd; it does not wait for them.
func (e *Endpoint) stop() {
	e.stopping.Store(true)
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	if _, err := unix.Write(e.sys.stopFD, one[:]); err != nil {
		// The eventfd is ours and counts far below its limit.
		panic(fmt.Sprintf("fdbased: write eventfd: %v", err))
	}
}

// finishStop waits for the dispatch goroutines, which were told to stop
// and have no batch inside netstack, and readies the endpoint for the next
// Attach.
func (e *Endpoint) finishStop() {
	e.wg.Wait()
	var drain [8]byte
	unix.Read(e.sys.stopFD, drain[:]) // back to not readable, for the next Attach
	e.stopping.Store(false)
}

// Close implements stack.LinkEndpoint.Close. It stops the dispatch
// goroutines, waits for them, releases what the endpoint allocated, and
// then runs the action given to SetOnCloseAction (netstack's is RemoveNIC,
// which calls Attach(nil): it runs with no lock of ours held). It does not
// close the fds it was given.
func (e *Endpoint) Close() {
	if !e.gate.Close() {
		return
	}
	unix.Close(e.sys.stopFD)
	e.mu.Lock()
	action := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	if action != nil {
		action()
	}
}

// dispatchLoop reads and dispatches batches from l until dispatch is
// stopped or the fd fails.
func (e *Endpoint) dispatchLoop(l *link) {
	defer e.wg.Done()
	if err := l.r.run(); err != nil && e.closedFn != nil && !e.stopping.Load() {
		e.closedFn(err)
	}
}
