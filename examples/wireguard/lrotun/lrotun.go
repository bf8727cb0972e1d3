// Package lrotun is a wireguard-go TUN device backed by a gVisor netstack
// whose NIC merges TCP segments with netlro.
//
// WireGuard decrypts every packet on its own, so whatever offloads the
// sending host had, netstack receives one tunnel-MTU packet per segment.
// wireguard-go hands a TUN device the packets of one receive batch in one
// Write call; Device delivers them to an lro.Engine and ends the batch with
// a Flush, so netstack gets one packet for each run of segments of a flow.
//
//	wireguard-go --Write(batch)--> Device --> lroendpoint (lro.Engine) --> NIC --> TCP
//	                                  |                          ^
//	                                  +------ end of batch: Flush +
//
// In the other direction the NIC advertises TCP segmentation offload, as a
// kernel TUN opened by wireguard-go does: netstack's TCP hands the device
// packets of up to 64 KiB, and Read cuts them into tunnel-MTU segments, as
// many as the caller has buffers for, so wireguard-go encrypts and sends
// whole batches.
//
// Copies. wireguard-go returns the buffers it passed to Write to its pool
// when Write returns, while netstack keeps received data until the
// application reads it, so netstack cannot be handed wireguard-go's
// buffers. Write hands each packet to the engine as bytes
// (lro.Engine.DeliverBytes), which reads it where it lies and copies once
// what it keeps: a segment that merges has its payload copied into the
// merged packet's own pooled views, with no PacketBuffer or view of its
// own; a packet that starts a merged packet or passes is copied into a
// pooled view. Read copies each segment into the caller's buffer, which
// the caller owns.
package lrotun

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// Options configures a Device. The zero value of every field but MTU means
// a default.
type Options struct {
	// MTU is the tunnel's MTU: the largest IP packet Read returns and Write
	// accepts (1420 is wireguard-go's default). Required.
	MTU int
	// LRO configures the engine on the NIC.
	LRO lro.Config
	// TrustChecksums makes the NIC report receive checksum offload, so that
	// neither the engine nor netstack verifies TCP, UDP or IPv4 header
	// checksums. WireGuard authenticates every packet between the two
	// peers, which is why Tailscale's netstack claims the offload; a
	// packet corrupted on the sending host before encryption is then
	// accepted. The default verifies every checksum.
	TrustChecksums bool
	// BatchSize is what BatchSize returns: the most packets wireguard-go
	// reads in one Read call. 0 means 128, the batch of wireguard-go's
	// Linux UDP bind.
	BatchSize int
	// QueueLen is how many packets netstack may queue for Read; further
	// packets are refused (netstack's TCP sends them again). 0 means 1024.
	QueueLen int
	// DisableTSO stops the NIC from advertising TCP segmentation offload,
	// so that netstack's TCP sends packets of the tunnel's MTU.
	DisableTSO bool
}

// ErrInvalidOptions is returned by New for options it cannot use.
var ErrInvalidOptions = errors.New("lrotun: invalid options")

const (
	defaultBatchSize = 128
	defaultQueueLen  = 1024
)

// Device is a tun.Device whose packets come from and go to a gVisor stack.
// Write may be called from several goroutines at once (wireguard-go calls it
// from one goroutine per peer); Read from one at a time, as wireguard-go
// does.
type Device struct {
	link   *link
	nic    *lroendpoint.Endpoint
	mtu    int
	batch  int
	events chan tun.Event

	closeOnce sync.Once
}

var _ tun.Device = (*Device)(nil)

// New creates NIC id on s, with an lro.Engine between the NIC and the
// device, and returns the device to hand to wireguard-go's device.NewDevice.
// The caller adds the tunnel's addresses and routes to s as usual. The stack
// stays the caller's: Close stops the device, and Stack.Destroy (or
// RemoveNIC) releases the NIC.
func New(s *stack.Stack, id tcpip.NICID, opts Options) (*Device, error) {
	if opts.MTU < header.IPv6MinimumMTU || opts.MTU > 65535 {
		return nil, fmt.Errorf("lrotun: MTU %d outside [%d, 65535]: %w", opts.MTU, header.IPv6MinimumMTU, ErrInvalidOptions)
	}
	if opts.BatchSize < 0 || opts.QueueLen < 0 {
		return nil, fmt.Errorf("lrotun: BatchSize %d or QueueLen %d below 0: %w", opts.BatchSize, opts.QueueLen, ErrInvalidOptions)
	}
	if opts.BatchSize == 0 {
		opts.BatchSize = defaultBatchSize
	}
	if opts.QueueLen == 0 {
		opts.QueueLen = defaultQueueLen
	}
	l := newLink(uint32(opts.MTU), opts.QueueLen, !opts.DisableTSO, opts.TrustChecksums)
	nic, err := lroendpoint.New(l, opts.LRO)
	if err != nil {
		return nil, fmt.Errorf("lrotun: %w", err)
	}
	if terr := s.CreateNIC(id, nic); terr != nil {
		return nil, fmt.Errorf("lrotun: create NIC %d: %s", id, terr)
	}
	d := &Device{
		link:   l,
		nic:    nic,
		mtu:    opts.MTU,
		batch:  opts.BatchSize,
		events: make(chan tun.Event, 1),
	}
	d.events <- tun.EventUp
	return d, nil
}

// Write implements tun.Device. It delivers bufs[i][offset:], one IP packet
// each, to the engine and then flushes it, so that every run of segments of
// a flow in the batch reaches netstack as one packet. The engine copies
// what it keeps of each packet (a merging segment's payload only), because
// wireguard-go reuses bufs once Write returns. A packet that is
// neither IPv4 nor IPv6 is skipped, and Write reports it as an error after
// delivering the rest.
func (d *Device) Write(bufs [][]byte, offset int) (int, error) {
	if d.link.isClosed() {
		return 0, os.ErrClosed
	}
	var err error
	for _, b := range bufs {
		if offset >= len(b) {
			continue
		}
		p := b[offset:]
		var proto tcpip.NetworkProtocolNumber
		switch header.IPVersion(p) {
		case header.IPv4Version:
			proto = header.IPv4ProtocolNumber
		case header.IPv6Version:
			proto = header.IPv6ProtocolNumber
		default:
			err = syscall.EAFNOSUPPORT
			continue
		}
		d.link.deliver(proto, p)
	}
	d.nic.Flush()
	return len(bufs), err
}

// Read implements tun.Device. It waits for netstack's first outbound packet
// and then takes what is queued without waiting, up to len(bufs) packets:
// it cuts a TCP packet larger than the MTU into segments, one per buffer,
// and keeps what does not fit for the next call.
func (d *Device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return d.link.read(bufs, sizes, offset)
}

// MTU implements tun.Device.
func (d *Device) MTU() (int, error) { return d.mtu, nil }

// Name implements tun.Device.
func (d *Device) Name() (string, error) { return "lrotun", nil }

// File implements tun.Device: there is no file, so it returns nil.
func (d *Device) File() *os.File { return nil }

// Events implements tun.Device. The device is up from New until Close.
func (d *Device) Events() <-chan tun.Event { return d.events }

// BatchSize implements tun.Device.
func (d *Device) BatchSize() int { return d.batch }

// Close implements tun.Device. It wakes a blocked Read, which returns
// os.ErrClosed, and releases the packets netstack queued for Read. It does
// not remove the NIC from the stack.
func (d *Device) Close() error {
	d.closeOnce.Do(func() {
		d.link.close()
		close(d.events)
	})
	return nil
}

// Stats returns the engine's counters.
func (d *Device) Stats() lro.Stats { return d.nic.Stats() }
