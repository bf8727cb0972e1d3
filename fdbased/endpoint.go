package fdbased

import (
	"errors"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/linkgate"
)

// DefaultBatchSize is the number of frames read per batch when
// Options.BatchSize is 0. It is NAPI's default budget (NAPI_POLL_WEIGHT).
const DefaultBatchSize = 64

// ErrInvalidOptions is wrapped by the error New returns for Options it
// cannot use.
var ErrInvalidOptions = errors.New("invalid options")

// Options says which fds an Endpoint uses and how. The zero value is not
// usable: FDs and MTU must be set.
type Options struct {
	// FDs are the file descriptors to read and write frames on. Each gets
	// its own dispatch goroutine. New makes them non-blocking but does not
	// take ownership: they must stay open until Close returns (netstack
	// calls it when it removes the NIC), and the caller closes them.
	//
	// With several fds, the sender must keep each flow on one fd (for
	// AF_PACKET sockets New joins them to one PACKET_FANOUT_HASH group),
	// or TCP segments arrive reordered.
	FDs []int

	// MTU is the largest network-layer packet, without the link header.
	MTU uint32

	// EthernetHeader makes the endpoint read and write Ethernet frames
	// (TAP, AF_PACKET) instead of bare IP packets (TUN, socketpair).
	EthernetHeader bool

	// Address is the endpoint's MAC address when EthernetHeader is set.
	// Inbound frames are delivered only when addressed to it or to a
	// group (multicast or broadcast) address, as in gVisor's fdbased.
	Address tcpip.LinkAddress

	// BatchSize is the most frames read in one batch, and so the most
	// delivered between two calls to rxbatch.Flusher.Flush. 0 means
	// DefaultBatchSize.
	BatchSize int

	// RXChecksumOffload makes the endpoint report
	// stack.CapabilityRXChecksumOffload, so that netstack does not verify
	// checksums of inbound packets. Leave it false unless the fd's other
	// end verified them; netlro's engine verifies what it merges.
	RXChecksumOffload bool

	// TXChecksumOffload makes the endpoint report
	// stack.CapabilityTXChecksumOffload, so that netstack does not compute
	// checksums of outbound packets. Only for a peer that does not check
	// them.
	TXChecksumOffload bool

	// Source says how the fds are read. The zero value, SourceAuto, picks
	// per fd the cheapest way the fd and the kernel allow: recvmmsg for a
	// socket; for a TAP or TUN device an io_uring multishot read, one
	// system call per batch, where New's probe finds that the kernel lets
	// this process use io_uring (Linux 6.7, not turned off by the
	// kernel.io_uring_disabled sysctl or a seccomp profile), and read(2)
	// otherwise; read(2) (readv) with VNetHdr. Another value forces that
	// source, and New refuses an fd it cannot read that way (recvmmsg is
	// for sockets, io_uring for the rest, read for any) and SourceIOUring
	// where io_uring is unavailable. Endpoint.Sources says what each fd got
	// and why.
	Source Source

	// VNetHdr says that every frame on the fds is preceded by a 10-byte
	// struct virtio_net_hdr, in the host's byte order: a TAP or TUN device
	// opened with IFF_VNET_HDR, or an AF_PACKET socket with
	// PACKET_VNET_HDR.
	//
	// Read, a checksum flagged VIRTIO_NET_HDR_F_NEEDS_CSUM is completed, and
	// a frame the kernel flags as a TCP super-packet (GSO TCPv4 or TCPv6)
	// is delivered whole, past the MTU, up to a 64 KiB IP packet; other
	// super-packets are dropped. With TSO turned on for a TAP device (ioctl
	// TUNSETOFFLOAD, TUN_F_CSUM|TUN_F_TSO4|TUN_F_TSO6), the kernel's TCP
	// then sends one read's worth of up to 64 KiB where it sent MTU-sized
	// frames. A read the kernel fails with EINVAL for a packet it could not
	// describe (a GSO type the device was not given) counts as
	// DroppedVNetHdr. Each fd's reader keeps a spare view of 64 KiB per
	// message of a batch for super-packets: 4 MiB of pooled chunks at the
	// default BatchSize.
	//
	// Written, the endpoint offers netstack host GSO (SupportedGSO): its
	// TCP hands over packets of up to 64 KiB with the checksum left
	// partial, and the header asks the kernel to segment them and complete
	// the checksum, so sending costs one write per 64 KiB too.
	//
	// Not with SourceIOUring.
	VNetHdr bool

	// ClosedFunc, if not nil, is called when a dispatch loop ends on its
	// own: with &tcpip.ErrClosedForReceive{} when the fd reached its end
	// (a seqpacket peer or a pipe's writer closed), with
	// &tcpip.ErrConnectionReset{} when poll reports a hang-up or an error
	// and nothing is left to read, or with the error that reading failed
	// with. It is not called when Attach(nil) or Close stops the loop. It
	// runs on the dispatch goroutine, so it must not wait for Close,
	// Attach(nil) or Wait to return.
	ClosedFunc func(tcpip.Error)
}

// Endpoint is a stack.LinkEndpoint over file descriptors that reads frames
// in batches and tells the dispatcher where each batch ends. New returns
// one; its zero value is not usable. Its methods are safe for concurrent
// use.
type Endpoint struct {
	hdrSize   int // link header length: 0 or header.EthernetMinimumSize
	batchSize int
	vnet      bool // Options.VNetHdr
	caps      stack.LinkEndpointCapabilities
	closedFn  func(tcpip.Error)

	// gate lets each batch through to the attached dispatcher and runs
	// the dispatch goroutines' lifecycle: Attach(nil) never waits for a
	// batch inside netstack (linkgate).
	gate *linkgate.Gate

	// mu guards the fields below it.
	mu sync.RWMutex
	// +checklocks:mu
	addr tcpip.LinkAddress
	// +checklocks:mu
	mtu uint32
	// +checklocks:mu
	onClose func()

	stopping atomic.Bool // set while the dispatch loops are being stopped
	wg       sync.WaitGroup
	stats    counters
	sys      endpointSys // the platform's part: fds, readers, write state
}

var (
	_ stack.LinkEndpoint = (*Endpoint)(nil)
	_ stack.GSOEndpoint  = (*Endpoint)(nil)
)

// New returns an Endpoint over opts.FDs. It makes the fds non-blocking and
// checks that each is a datagram, seqpacket or raw socket or a non-socket
// such as a TAP device; a stream socket is refused because it does not
// keep frame boundaries. Reading starts when Attach is called. On
// platforms other than Linux it returns an error wrapping
// errors.ErrUnsupported.
func New(opts *Options) (*Endpoint, error) {
	return newEndpoint(opts)
}

// MTU implements stack.LinkEndpoint.MTU.
func (e *Endpoint) MTU() uint32 {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.mtu
}

// SetMTU implements stack.LinkEndpoint.SetMTU. Dispatch loops size their
// views for the new MTU from their next batch on.
func (e *Endpoint) SetMTU(mtu uint32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mtu = mtu
}

// MaxHeaderLength implements stack.LinkEndpoint.MaxHeaderLength.
func (e *Endpoint) MaxHeaderLength() uint16 {
	return uint16(e.hdrSize)
}

// LinkAddress implements stack.LinkEndpoint.LinkAddress.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.addr
}

// SetLinkAddress implements stack.LinkEndpoint.SetLinkAddress. Dispatch
// loops filter on the new address from their next batch on.
func (e *Endpoint) SetLinkAddress(addr tcpip.LinkAddress) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.addr = addr
}

// Capabilities implements stack.LinkEndpoint.Capabilities.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return e.caps
}

// IsAttached implements stack.LinkEndpoint.IsAttached.
func (e *Endpoint) IsAttached() bool { return e.gate.IsAttached() }

// Wait implements stack.LinkEndpoint.Wait: it waits for the dispatch
// goroutines to stop, which they do after Attach(nil), Close, or when
// their fd fails or its peer closes it. While Attach(nil) left them to
// stop in the background, because a batch was inside netstack, whose lock
// the caller may hold (Stack.Wait holds it), it returns at once; Close
// waits for them.
func (e *Endpoint) Wait() {
	if !e.gate.Stopping() {
		e.wg.Wait()
	}
}

// ARPHardwareType implements stack.LinkEndpoint.ARPHardwareType.
func (e *Endpoint) ARPHardwareType() header.ARPHardwareType {
	if e.hdrSize > 0 {
		return header.ARPHardwareEther
	}
	return header.ARPHardwareNone
}

// AddHeader implements stack.LinkEndpoint.AddHeader: with EthernetHeader
// it pushes an Ethernet header, as gVisor's fdbased does.
func (e *Endpoint) AddHeader(pkt *stack.PacketBuffer) {
	if e.hdrSize == 0 {
		return
	}
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.ParseHeader: with
// EthernetHeader it consumes the Ethernet header and sets the packet's
// network protocol from it, as gVisor's fdbased does.
func (e *Endpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	if e.hdrSize == 0 {
		return true
	}
	hdr, ok := pkt.LinkHeader().Consume(e.hdrSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(hdr).Type()
	return true
}

// SetOnCloseAction implements stack.LinkEndpoint.SetOnCloseAction. Close
// runs action once the dispatch loops have stopped.
func (e *Endpoint) SetOnCloseAction(action func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onClose = action
}

// GSOMaxSize implements stack.GSOEndpoint: with Options.VNetHdr, the
// largest TCP packet netstack may hand over for the kernel to segment
// (Linux's default gso_max_size); without, 0.
func (e *Endpoint) GSOMaxSize() uint32 {
	if e.vnet {
		return gsoMaxSize
	}
	return 0
}

// SupportedGSO implements stack.GSOEndpoint: with Options.VNetHdr, host
// GSO, so that netstack's TCP writes packets of up to GSOMaxSize bytes with
// a partial checksum and the kernel segments and completes them; without,
// none.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO {
	if e.vnet {
		return stack.HostGSOSupported
	}
	return stack.GSONotSupported
}

// Sources says how each fd is read, in the order of Options.FDs, and
// why. A fd that SourceAuto or SourceIOUring gave io_uring is reported
// as read with read(2) if its ring could not be set up when dispatch
// started.
func (e *Endpoint) Sources() []SourceChoice {
	return e.sys.sources()
}

// Stats returns a snapshot of the endpoint's counters.
func (e *Endpoint) Stats() Stats {
	return e.stats.snapshot()
}

// bufSize is the size of the view each frame is read into: the largest
// frame the endpoint accepts plus one byte, so that a read that fills the
// view is known to be oversized rather than exactly full.
func (e *Endpoint) bufSize() int {
	return e.hdrSize + int(e.MTU()) + 1
}
