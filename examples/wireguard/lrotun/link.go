package lrotun

import (
	"os"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/linkgate"
	"github.com/netlro/netlro/rxbatch"
)

// link is the device's side of the NIC: the stack.LinkEndpoint that
// lroendpoint wraps. Inbound packets come from Device.Write; outbound
// packets wait in out for Device.Read.
type link struct {
	mtu   uint32
	tso   bool
	trust bool

	// gate lets deliveries through to the attached dispatcher without a
	// lock: netstack calls Attach(nil) holding its own lock, and a
	// delivery that waited for a lock of ours while netstack's lock is
	// taken could never finish.
	gate *linkgate.Gate

	out    chan *stack.PacketBuffer // one reference each, taken by WritePackets
	closed chan struct{}            // closed by close

	mu sync.Mutex // orders WritePackets' sends before close's drain
	// +checklocks:mu
	isShut bool

	readMu sync.Mutex // held by read and by close's release of pending
	// pending is a packet read has cut only partly into segments; next is
	// the offset of its first payload byte not yet read.
	// +checklocks:readMu
	pending *stack.PacketBuffer
	// +checklocks:readMu
	next int
}

var (
	_ stack.LinkEndpoint = (*link)(nil)
	_ stack.GSOEndpoint  = (*link)(nil)
)

func newLink(mtu uint32, queueLen int, tso, trust bool) *link {
	return &link{
		mtu:    mtu,
		tso:    tso,
		trust:  trust,
		gate:   linkgate.New(linkgate.Hooks{}), // deliveries run on wireguard-go's goroutines: nothing to start or stop
		out:    make(chan *stack.PacketBuffer, queueLen),
		closed: make(chan struct{}),
	}
}

// deliver hands b, one IP packet that the caller reuses once deliver
// returns, to the attached dispatcher: as bytes where it takes them
// (rxbatch.BytesDispatcher: the engine reads wireguard-go's buffer where it
// lies and copies only what it keeps; TestTransfer checks that the engine
// lroendpoint attaches us to has it), else as a PacketBuffer of its own.
func (l *link) deliver(proto tcpip.NetworkProtocolNumber, b []byte) {
	d := l.gate.Enter()
	if d == nil {
		return
	}
	if bd, ok := d.(rxbatch.BytesDispatcher); ok {
		bd.DeliverBytes(proto, b)
	} else {
		pkt := rxbatch.NewPacket(proto, 0, buffer.MakeWithData(b), l.trust)
		d.DeliverNetworkPacket(proto, pkt)
		pkt.DecRef()
	}
	l.gate.Leave()
}

func (l *link) isClosed() bool {
	select {
	case <-l.closed:
		return true
	default:
		return false
	}
}

// close wakes read and releases every packet queued for it.
func (l *link) close() {
	l.mu.Lock()
	if l.isShut {
		l.mu.Unlock()
		return
	}
	l.isShut = true
	close(l.closed)
	l.mu.Unlock()

	l.readMu.Lock()
	if l.pending != nil {
		l.pending.DecRef()
		l.pending = nil
	}
	l.readMu.Unlock()
	for {
		select {
		case pkt := <-l.out:
			pkt.DecRef()
		default:
			return
		}
	}
}

// WritePackets implements stack.LinkEndpoint. It queues each packet for
// Read without waiting, and refuses what does not fit.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isShut {
		return 0, &tcpip.ErrClosedForSend{}
	}
	n := 0
	for _, pkt := range pkts.AsSlice() {
		select {
		case l.out <- pkt.IncRef():
			n++
		default:
			pkt.DecRef()
			if n == 0 {
				return 0, &tcpip.ErrNoBufferSpace{}
			}
			return n, nil
		}
	}
	return n, nil
}

// read fills bufs[i][offset:] with outbound packets, cutting TCP packets
// larger than the MTU into segments; see Device.Read.
func (l *link) read(bufs [][]byte, sizes []int, offset int) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	l.readMu.Lock()
	defer l.readMu.Unlock()
	n := 0
	for n < len(bufs) {
		if l.pending == nil {
			pkt, ok := l.take(n == 0)
			if !ok {
				break
			}
			l.pending, l.next = pkt, 0
		}
		k, done := l.cut(bufs[n:], sizes[n:], offset)
		n += k
		if !done {
			break // out of buffers
		}
		l.pending.DecRef()
		l.pending = nil
	}
	if n == 0 {
		return 0, os.ErrClosed
	}
	return n, nil
}

// take returns the next queued packet, waiting for one if wait is set.
// It returns false when nothing is queued and it must not wait, or the link
// is closed.
func (l *link) take(wait bool) (*stack.PacketBuffer, bool) {
	if l.isClosed() {
		return nil, false
	}
	if !wait {
		select {
		case pkt := <-l.out:
			return pkt, true
		default:
			return nil, false
		}
	}
	select {
	case pkt := <-l.out:
		return pkt, true
	case <-l.closed:
		return nil, false
	}
}

// cut writes l.pending into bufs: whole if it has no segmentation offload,
// else the segments from l.next on, one per buffer. It returns how many
// buffers it filled and whether the packet is done.
//
// +checklocks:l.readMu
func (l *link) cut(bufs [][]byte, sizes []int, offset int) (int, bool) {
	pkt := l.pending
	gso := pkt.GSOOptions
	if gso.Type != stack.GSOTCPv4 && gso.Type != stack.GSOTCPv6 {
		n := 0
		dst := bufs[0][offset:]
		if pkt.Size() <= len(dst) {
			for _, s := range pkt.AsSlices() {
				n += copy(dst[n:], s)
			}
		}
		// A packet larger than the buffer, which netstack does not send
		// past the MTU, is dropped as a short write would drop it.
		sizes[0] = n
		return 1, true
	}
	k, next := segment(pkt, l.next, int(gso.MSS), bufs, sizes, offset)
	l.next = next
	return k, next >= pkt.Data().Size()
}

// MTU implements stack.LinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.LinkEndpoint. The tunnel's MTU is wireguard-go's
// to set, so it is ignored.
func (l *link) SetMTU(uint32) {}

// MaxHeaderLength implements stack.LinkEndpoint: IP packets have no link
// header.
func (l *link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.LinkEndpoint: a tunnel has none.
func (l *link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.LinkEndpoint; a tunnel has no link
// address, so it is ignored.
func (l *link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint.
func (l *link) Capabilities() stack.LinkEndpointCapabilities {
	if l.trust {
		return stack.CapabilityRXChecksumOffload
	}
	return 0
}

// Attach implements stack.LinkEndpoint. It never waits for a delivery
// (linkgate).
func (l *link) Attach(d stack.NetworkDispatcher) { l.gate.Attach(d) }

// IsAttached implements stack.LinkEndpoint.
func (l *link) IsAttached() bool { return l.gate.IsAttached() }

// Wait implements stack.LinkEndpoint. Deliveries run on wireguard-go's
// goroutines, so there is nothing of ours to wait for.
func (l *link) Wait() {}

// ARPHardwareType implements stack.LinkEndpoint.
func (l *link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.LinkEndpoint: there is no link header.
func (l *link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.LinkEndpoint: there is no link header.
func (l *link) ParseHeader(*stack.PacketBuffer) bool { return true }

// Close implements stack.LinkEndpoint: deliveries stop for good. The
// queue is the Device's to close.
func (l *link) Close() { l.gate.Close() }

// SetOnCloseAction implements stack.LinkEndpoint.
func (l *link) SetOnCloseAction(func()) {}

// GSOMaxSize implements stack.GSOEndpoint: the largest IP packet.
func (l *link) GSOMaxSize() uint32 {
	if !l.tso {
		return 0
	}
	return 1<<16 - 1
}

// SupportedGSO implements stack.GSOEndpoint. With TSO netstack's TCP hands
// over large packets with a partial checksum (CHECKSUM_PARTIAL), which Read
// completes per segment.
func (l *link) SupportedGSO() stack.SupportedGSO {
	if !l.tso {
		return stack.GSONotSupported
	}
	return stack.HostGSOSupported
}
