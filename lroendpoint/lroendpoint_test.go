package lroendpoint

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
)

// counter is a NIC stand-in that counts what it is handed.
type counter struct{ pkts, bytes int }

func (c *counter) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	c.pkts++
	c.bytes += pkt.Data().Size()
}

func (c *counter) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// gsoChannel is a channel endpoint that claims GSO support.
type gsoChannel struct{ *channel.Endpoint }

func (gsoChannel) GSOMaxSize() uint32               { return 1 << 16 }
func (gsoChannel) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }

func inject(ch *channel.Endpoint, b []byte) {
	pkt := testpacket.NewPacket(b)
	ch.InjectInbound(testpacket.Proto(b), pkt)
	pkt.DecRef()
}

func TestForwards(t *testing.T) {
	ch := channel.New(4, 1500, "\x02\x00\x00\x00\x00\x01")
	ch.LinkEPCapabilities = stack.CapabilityResolutionRequired
	e, err := New(gsoChannel{ch}, lro.Config{})
	require.NoError(t, err)
	assert.Equal(t, uint32(1500), e.MTU())
	e.SetMTU(9000)
	assert.Equal(t, uint32(9000), ch.MTU())
	assert.Equal(t, ch.LinkAddress(), e.LinkAddress())
	assert.Equal(t, ch.MaxHeaderLength(), e.MaxHeaderLength())
	assert.Equal(t, ch.ARPHardwareType(), e.ARPHardwareType())
	assert.Equal(t, stack.CapabilityResolutionRequired, e.Capabilities(), "capabilities unchanged by default")
	assert.Equal(t, uint32(1<<16), e.GSOMaxSize())
	assert.Equal(t, stack.HostGSOSupported, e.SupportedGSO())
	assert.Same(t, ch, e.Lower().(gsoChannel).Endpoint)

	claimed, err := New(ch, lro.Config{ClaimChecksumOffload: true})
	require.NoError(t, err)
	assert.Equal(t, stack.CapabilityResolutionRequired|stack.CapabilityRXChecksumOffload, claimed.Capabilities())
	assert.Equal(t, ch.SupportedGSO(), claimed.SupportedGSO())
	assert.Equal(t, ch.GSOMaxSize(), claimed.GSOMaxSize())

	_, err = New(ch, lro.Config{MaxFlows: -1})
	require.ErrorIs(t, err, lro.ErrInvalidConfig)
}

func TestWritePacketsForwards(t *testing.T) {
	ch := channel.New(4, 1500, "")
	e, err := New(ch, lro.Config{})
	require.NoError(t, err)
	var pkts stack.PacketBufferList
	b := testpacket.TCP{Payload: []byte("out")}.Bytes()
	pkts.PushBack(testpacket.NewPacket(b))
	n, terr := e.WritePackets(pkts)
	pkts.DecRef()
	require.Nil(t, terr)
	assert.Equal(t, 1, n)
	out := ch.Read()
	require.NotNil(t, out)
	assert.Equal(t, b, testpacket.Bytes(out))
	out.DecRef()
}

// TestAttachNilReleases: detaching releases what the engine held,
// delivering nothing more to the old dispatcher, and detaches the lower
// endpoint too.
func TestAttachNilReleases(t *testing.T) {
	ch := channel.New(4, 1500, "")
	e, err := New(ch, lro.Config{FlushDelay: -1})
	require.NoError(t, err)
	nic := &counter{}
	e.Attach(nic)
	assert.True(t, e.IsAttached())
	assert.True(t, ch.IsAttached())
	for _, b := range testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 3000), 1000) {
		inject(ch, b)
	}
	assert.Zero(t, nic.pkts, "held")
	e.Attach(nil)
	assert.Zero(t, nic.pkts, "delivered after detaching")
	assert.False(t, e.IsAttached())
	assert.False(t, ch.IsAttached())
	assert.Zero(t, e.Stats().Held())
}

// TestCloseReleases: Close delivers what was held and leaves nothing for
// the leak checker.
func TestCloseReleases(t *testing.T) {
	ch := channel.New(4, 1500, "")
	e, err := New(ch, lro.Config{FlushDelay: time.Hour}) // only Close flushes
	require.NoError(t, err)
	nic := &counter{}
	e.Attach(nic)
	for _, b := range testpacket.Segments(testpacket.TCP{V6: true}, testpacket.Payload(1, 2000), 1000) {
		inject(ch, b)
	}
	e.Close()
	e.Wait()
	assert.Zero(t, nic.pkts, "Close detaches first")
	assert.Zero(t, e.Stats().Held())
}

// blocker is a dispatcher whose deliveries wait until release is closed,
// as a delivery waits for netstack's lock while Stack.Destroy holds it.
type blocker struct {
	inside  chan struct{} // gets a value as a delivery starts waiting
	release chan struct{}
}

func (b *blocker) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	b.inside <- struct{}{}
	<-b.release
}

func (b *blocker) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// TestDetachNeverWaitsForNetstack: while a packet is stuck inside netstack
// (waiting for the lock its caller holds), Attach(nil) and Wait return at
// once; Close, which netstack calls without its lock, returns once the
// packet is out, with the lower endpoint detached and nothing held.
func TestDetachNeverWaitsForNetstack(t *testing.T) {
	ch := channel.New(4, 1500, "")
	e, err := New(ch, lro.Config{})
	require.NoError(t, err)
	b := &blocker{inside: make(chan struct{}, 8), release: make(chan struct{})}
	e.Attach(b)
	segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 3000), 1000)
	injected := make(chan struct{})
	go func() {
		defer close(injected)
		inject(ch, (testpacket.TCP{Flags: header.TCPFlagAck | header.TCPFlagFin}).Bytes()) // passes: stuck
	}()
	<-b.inside
	for _, seg := range segs {
		inject(ch, seg) // other flows of the engine go on
	}

	returned := make(chan string)
	go func() {
		e.Attach(nil)
		returned <- "Attach(nil)"
		e.Wait()
		returned <- "Wait"
	}()
	for _, want := range []string{"Attach(nil)", "Wait"} {
		select {
		case got := <-returned:
			assert.Equal(t, want, got)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s waited for the packet inside netstack", want)
		}
	}
	assert.False(t, e.IsAttached())

	closed := make(chan struct{})
	go func() {
		defer close(closed)
		e.Close()
	}()
	select {
	case <-closed:
		t.Fatal("Close returned before the lower endpoint was detached")
	case <-injected:
		t.Fatal("the stuck delivery returned before it was released")
	default:
	}
	close(b.release)
	<-injected
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return once the packet was out")
	}
	assert.False(t, ch.IsAttached(), "lower endpoint detached")
	assert.Zero(t, e.Stats().Held())
}

// TestFlushPassesThrough: Flush on the wrapper reaches the engine.
func TestFlushPassesThrough(t *testing.T) {
	ch := channel.New(4, 1500, "")
	e, err := New(ch, lro.Config{FlushDelay: -1})
	require.NoError(t, err)
	nic := &counter{}
	e.Attach(nic)
	inject(ch, testpacket.TCP{Payload: []byte("held")}.Bytes())
	assert.Zero(t, nic.pkts)
	e.Flush()
	assert.Equal(t, 1, nic.pkts)
	assert.Equal(t, uint64(1), e.Stats().FlushBatch)
	e.Attach(nil)
}

// TestTrustsLowerChecksumOffload: a lower endpoint that reports
// CapabilityRXChecksumOffload verified what it delivers, so the engine
// does not check again; segments merge even with partial checksums.
func TestTrustsLowerChecksumOffload(t *testing.T) {
	ch := channel.New(4, 1500, "")
	ch.LinkEPCapabilities = stack.CapabilityRXChecksumOffload
	e, err := New(ch, lro.Config{FlushDelay: -1})
	require.NoError(t, err)
	nic := &counter{}
	e.Attach(nic)
	for _, b := range testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 3000), 1000) {
		b[36], b[37] = 0, 0 // TCP checksum left to the (absent) offload
		inject(ch, b)
	}
	e.Flush()
	assert.Equal(t, 1, nic.pkts)
	assert.Zero(t, e.Stats().PassBadChecksum)
	e.Attach(nil)
}
