package lroendpoint

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
)

// In-process addresses: packets never leave the test's two stacks.
var (
	addr4 = [2]tcpip.Address{tcpip.AddrFrom4([4]byte{10, 0, 0, 1}), tcpip.AddrFrom4([4]byte{10, 0, 0, 2})}
	addr6 = [2]tcpip.Address{testpacket.Src6, testpacket.Dst6}
)

func newStack(t *testing.T, ep stack.LinkEndpoint, addr tcpip.Address) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	require.Nil(t, s.CreateNIC(1, ep))
	proto := header.IPv4ProtocolNumber
	if addr.Len() == 16 {
		proto = header.IPv6ProtocolNumber
	}
	require.Nil(t, s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: addr.WithPrefix()}, stack.AddressProperties{}))
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	return s
}

// pump moves packets from one channel endpoint to the other as a wire
// would, flipping one payload byte (checksums left alone) in a fraction
// of the data packets bound for the receiver.
func pump(ctx context.Context, from, to *channel.Endpoint, corrupt float64, seed uint64, corrupted *int) {
	r := rand.New(rand.NewPCG(seed, seed))
	for {
		pkt := from.ReadContext(ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		proto := pkt.NetworkProtocolNumber
		pkt.DecRef()
		if b := v.AsSlice(); corrupt > 0 && len(b) > 200 && r.Float64() < corrupt {
			b[100+r.IntN(len(b)-100)] ^= 0x20
			*corrupted++
		}
		in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
		to.InjectInbound(proto, in)
		in.DecRef()
	}
}

// pumpBytes moves packets from a sender's channel endpoint into e as a
// program with buffers of its own does: each packet is copied into one
// reused buffer and handed to DeliverBytes, and the buffer is overwritten
// as soon as the call returns; Flush ends each batch (nothing more
// queued). It damages a fraction corrupt of the data packets as pump
// does.
func pumpBytes(ctx context.Context, from *channel.Endpoint, e *Endpoint, corrupt float64, seed uint64, corrupted *int) {
	r := rand.New(rand.NewPCG(seed, seed))
	buf := make([]byte, 1<<16)
	for {
		pkt := from.ReadContext(ctx)
		if pkt == nil {
			return
		}
		for ; pkt != nil; pkt = from.Read() {
			v := pkt.ToView()
			b := buf[:copy(buf, v.AsSlice())]
			v.Release()
			proto := pkt.NetworkProtocolNumber
			pkt.DecRef()
			if corrupt > 0 && len(b) > 200 && r.Float64() < corrupt {
				b[100+r.IntN(len(b)-100)] ^= 0x20
				*corrupted++
			}
			e.DeliverBytes(proto, b)
			for i := range b {
				b[i] = 0xa5 // whatever the engine kept of b is garbage now
			}
		}
		e.Flush()
	}
}

// way is how the receiver's packets reach the engine in transfer.
type way int

const (
	viaInject way = iota // a PacketBuffer each, into the lower channel endpoint
	viaBytes             // Endpoint.DeliverBytes from a reused buffer, Flush per batch
)

// transfer sends n seeded bytes from a plain netstack to one whose link
// endpoint is wrapped by lroendpoint, with corrupt of the data frames
// damaged in flight, and returns what the receiver read and the stacks.
func transfer(t *testing.T, cfg lro.Config, v6 bool, n int, corrupt float64, in way) (sent, got [32]byte, e *Endpoint, rx *stack.Stack, corrupted int) {
	t.Helper()
	addrs, proto := addr4, header.IPv4ProtocolNumber
	if v6 {
		addrs, proto = addr6, header.IPv6ProtocolNumber
	}
	txLink, rxLink := channel.New(512, 1500, ""), channel.New(512, 1500, "")
	e, err := New(rxLink, cfg)
	require.NoError(t, err)
	tx := newStack(t, txLink, addrs[0])
	rx = newStack(t, e, addrs[1])
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if in == viaBytes {
			pumpBytes(ctx, txLink, e, corrupt, 1, &corrupted)
			return
		}
		pump(ctx, txLink, rxLink, corrupt, 1, &corrupted)
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

	data := testpacket.Payload(42, n)
	sent = sha256.Sum256(data)
	got = testpacket.Transfer(t, tx, rx, tcpip.FullAddress{NIC: 1, Addr: addrs[1], Port: 5201}, proto, data)
	return sent, got, e, rx, corrupted
}

// TestStackAcceptsMergedPackets runs real TCP transfers into netstack
// through the engine, with 1% of data frames corrupted in flight, in both
// checksum modes, with packets injected as PacketBuffers or handed over
// as bytes from a buffer the caller overwrites after each call: the
// stream arrives intact, merging happened, and netstack's checksum checks
// rejected only the corrupted segments, never a merged packet.
func TestStackAcceptsMergedPackets(t *testing.T) {
	for _, in := range []way{viaInject, viaBytes} {
		for _, claim := range []bool{false, true} {
			for _, v6 := range []bool{false, true} {
				t.Run(fmt.Sprintf("bytes=%v/claim=%v/v6=%v", in == viaBytes, claim, v6), func(t *testing.T) {
					testStackAccepts(t, in, claim, v6)
				})
			}
		}
	}
}

// testStackAccepts is one row of TestStackAcceptsMergedPackets.
func testStackAccepts(t *testing.T, in way, claim, v6 bool) {
	sent, got, e, rx, corrupted := transfer(t, lro.Config{ClaimChecksumOffload: claim}, v6, 4<<20, 0.01, in)
	require.Equal(t, sent, got, "SHA-256 of the stream")
	st := e.Stats()
	t.Logf("%d frames corrupted; %v", corrupted, st)
	assert.NotZero(t, st.MergedPackets, "merged packets reached netstack")
	require.NotZero(t, corrupted)
	tcpErrs := rx.Stats().TCP.ChecksumErrors.Value()
	if claim {
		assert.Equal(t, uint64(corrupted), st.DropBadChecksum, "the engine drops what netstack would")
		assert.Zero(t, tcpErrs, "netstack checks nothing in this mode")
		return
	}
	assert.Equal(t, uint64(corrupted), st.PassBadChecksum, "bad segments pass unchanged")
	assert.Equal(t, uint64(corrupted), tcpErrs, "netstack drops exactly the corrupted segments")
}
