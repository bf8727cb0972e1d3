package lroendpoint

import (
	"context"
	"crypto/sha256"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/nested"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
)

// orderCheck sits between the lroendpoint and netstack and checks that
// the data of the one flow under test reaches netstack in sequence: a
// segment that starts past the next expected byte means that something
// was lost or overtaken on the way through the endpoint.
type orderCheck struct {
	nested.Endpoint
	mu sync.Mutex
	// next is the next expected sequence number, once started.
	// +checklocks:mu
	next uint32
	// +checklocks:mu
	started bool
	// gaps counts data that started past next.
	// +checklocks:mu
	gaps int
	// packets counts the data packets seen.
	// +checklocks:mu
	packets int
}

// DeliverNetworkPacket implements stack.NetworkDispatcher.
func (o *orderCheck) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	o.check(pkt)
	o.Endpoint.DeliverNetworkPacket(proto, pkt)
}

func (o *orderCheck) check(pkt *stack.PacketBuffer) {
	v := pkt.ToView()
	defer v.Release()
	b := v.AsSlice()
	ip := header.IPv4(b)
	if len(b) < header.IPv4MinimumSize || !ip.IsValid(len(b)) || ip.TransportProtocol() != header.TCPProtocolNumber {
		return
	}
	tcpb := header.TCP(ip.Payload())
	if len(tcpb) < header.TCPMinimumSize || int(tcpb.DataOffset()) > len(tcpb) {
		return
	}
	n := uint32(len(tcpb) - int(tcpb.DataOffset()))
	if n == 0 {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.packets++
	seq := tcpb.SequenceNumber()
	switch {
	case !o.started:
		o.started = true
	case int32(seq-o.next) > 0:
		o.gaps++
	case int32(seq+n-o.next) <= 0:
		return // a retransmission of what arrived already
	}
	o.next = seq + n
}

// TestSetMergingUnderTraffic sends a seeded stream into netstack through
// the endpoint while merging is turned off and on every few dozen packets,
// from the goroutine that delivers them, so that packets are held at each
// switch: the stream arrives intact and in order, and both halves did
// their part.
func TestSetMergingUnderTraffic(t *testing.T) {
	txLink, rxLink := channel.New(8192, 1500, ""), channel.New(8192, 1500, "")
	e, err := New(rxLink, lro.Config{})
	require.NoError(t, err)
	var oc orderCheck
	oc.Init(e, &oc)
	tx := newStack(t, txLink, addr4[0])
	rx := newStack(t, &oc, addr4[1])

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var switches, offPackets, injected int
	wg.Go(func() {
		// Forward to the receiver, switching every 37 packets: a period
		// that is no multiple of anything the engine counts.
		for i := 0; ; i++ {
			pkt := txLink.ReadContext(ctx)
			if pkt == nil {
				return
			}
			if i%37 == 0 {
				e.SetMerging(!e.Merging())
				switches++
			}
			if !e.Merging() {
				offPackets++
			}
			in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(pkt.ToView())})
			proto := pkt.NetworkProtocolNumber
			pkt.DecRef()
			rxLink.InjectInbound(proto, in)
			in.DecRef()
			injected++
		}
	})
	wg.Go(func() { pump(ctx, rxLink, txLink, 0, 2, new(int)) })
	defer func() {
		cancel()
		wg.Wait()
		tx.Close()
		rx.Close()
		tx.Wait()
		rx.Wait()
	}()

	data := testpacket.Payload(7, 8<<20)
	got := testpacket.Transfer(t, tx, rx, tcpip.FullAddress{NIC: 1, Addr: addr4[1], Port: 5201}, header.IPv4ProtocolNumber, data)
	require.Equal(t, sha256.Sum256(data), got, "SHA-256 of the stream")

	cancel()
	wg.Wait()
	st := e.Stats()
	oc.mu.Lock()
	defer oc.mu.Unlock()
	t.Logf("%d switches, %d packets while merging was off; %d data packets into netstack; %v", switches, offPackets, oc.packets, st)
	assert.Zero(t, oc.gaps, "data overtaken or lost between the endpoint and netstack")
	assert.Greater(t, switches, 10)
	assert.NotZero(t, st.PassMergingOff, "segments passed because merging was off")
	assert.LessOrEqual(t, st.PassMergingOff, uint64(offPackets), "only packets of the off halves passed for it")
	assert.NotZero(t, st.MergedPackets, "packets merged while merging was on")
	assert.Equal(t, uint64(injected), st.PacketsIn, "the engine saw every packet")
}

// TestSetMergingFlushesHeld checks the switch without traffic: turning
// merging off delivers what the engine holds at once, packets delivered
// while it is off pass one for one, and turning it on merges again.
func TestSetMergingFlushesHeld(t *testing.T) {
	link := channel.New(64, 1500, "")
	e, err := New(link, lro.Config{FlushDelay: -1})
	require.NoError(t, err)
	d := &countDispatcher{}
	e.Attach(d)
	defer e.Close()
	segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 12*1448), 1448)
	inject := func(segs [][]byte) {
		for _, seg := range segs {
			pkt := testpacket.NewPacket(seg)
			link.InjectInbound(testpacket.Proto(seg), pkt)
			pkt.DecRef()
		}
	}
	require.True(t, e.Merging())
	inject(segs[:4])
	require.Zero(t, d.count(), "held by the engine")
	e.SetMerging(false)
	require.False(t, e.Merging())
	assert.Equal(t, 1, d.count(), "the held packet was delivered at the switch")
	inject(segs[4:8])
	assert.Equal(t, 5, d.count(), "one for one while off")
	e.SetMerging(true)
	inject(segs[8:])
	e.Flush()
	assert.Equal(t, 6, d.count(), "merged again")
	st := e.Stats()
	assert.Equal(t, uint64(12), st.PacketsIn)
	assert.Equal(t, uint64(4), st.PassMergingOff, "the off half passed one for one")
}

// countDispatcher counts the packets netstack would get.
type countDispatcher struct {
	mu sync.Mutex
	// +checklocks:mu
	n int
}

func (c *countDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
}

func (c *countDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (c *countDispatcher) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestSetMergingOffStillChecks: with ClaimChecksumOffload netstack checks
// no checksum, so a packet that passes while merging is off must have been
// checked all the same: a corrupted segment is dropped, a good one passes.
func TestSetMergingOffStillChecks(t *testing.T) {
	link := channel.New(64, 1500, "")
	e, err := New(link, lro.Config{ClaimChecksumOffload: true})
	require.NoError(t, err)
	d := &countDispatcher{}
	e.Attach(d)
	defer e.Close()
	e.SetMerging(false)
	segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(3, 2*1448), 1448)
	bad := append([]byte(nil), segs[0]...)
	bad[len(bad)-1] ^= 0x40 // a payload byte, checksums left as they were
	for _, seg := range [][]byte{bad, segs[0], segs[1]} {
		pkt := testpacket.NewPacket(seg)
		link.InjectInbound(testpacket.Proto(seg), pkt)
		pkt.DecRef()
	}
	assert.Equal(t, 2, d.count(), "the corrupted segment was dropped, the good ones passed one for one")
	st := e.Stats()
	assert.Equal(t, uint64(1), st.DropBadChecksum)
	assert.Equal(t, uint64(2), st.PassMergingOff)
}

// switchingDispatcher is a netstack that turns merging off and on from
// inside its own deliveries.
type switchingDispatcher struct {
	countDispatcher
	e *Endpoint
}

func (s *switchingDispatcher) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	s.e.SetMerging(!s.e.Merging())
	s.countDispatcher.DeliverNetworkPacket(proto, pkt)
}

// TestSetMergingFromNetstack: SetMerging called inside a delivery (a
// netstack callback on the goroutine that delivers) returns, and every
// segment still arrives.
func TestSetMergingFromNetstack(t *testing.T) {
	link := channel.New(64, 1500, "")
	e, err := New(link, lro.Config{FlushDelay: -1, MaxSegments: 2})
	require.NoError(t, err)
	d := &switchingDispatcher{e: e}
	e.Attach(d)
	defer e.Close()
	segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(5, 40*1448), 1448)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, seg := range segs {
			pkt := testpacket.NewPacket(seg)
			link.InjectInbound(testpacket.Proto(seg), pkt)
			pkt.DecRef()
		}
		e.Flush()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a delivery that switched merging did not return within a minute")
	}
	st := e.Stats()
	assert.Equal(t, uint64(len(segs)), st.SegmentsMerged+uint64(d.count()), "every segment reached netstack, merged or alone")
	assert.NotZero(t, st.PassMergingOff)
	assert.NotZero(t, st.MergedPackets)
}
