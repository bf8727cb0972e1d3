package lrotun

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/rxbatch"
)

const testMTU = 1420

func newTestStack(t *testing.T, opts Options, addrs ...string) (*stack.Stack, *Device) {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	d, err := New(s, 1, opts)
	require.NoError(t, err)
	for _, a := range addrs {
		addr := netip.MustParseAddr(a)
		proto := ipv4.ProtocolNumber
		if addr.Is6() {
			proto = ipv6.ProtocolNumber
		}
		require.Nil(t, s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}, stack.AddressProperties{}))
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}, {Destination: header.IPv6EmptySubnet, NIC: 1}})
	return s, d
}

// pump moves packets from one device's Read to the other's Write in the
// batches Read returns, as wireguard-go does between its TUN and its UDP
// sockets, checking each packet as a kernel would.
type pump struct {
	mu sync.Mutex
	// +checklocks:mu
	reads int
	// +checklocks:mu
	packets int
	// +checklocks:mu
	maxBatch int
	// +checklocks:mu
	bad []string
}

func (p *pump) run(from, to *Device, done *sync.WaitGroup) {
	defer done.Done()
	const offset = 16 // wireguard-go's MessageTransportHeaderSize
	bufs := make([][]byte, from.BatchSize())
	sizes := make([]int, len(bufs))
	for i := range bufs {
		bufs[i] = make([]byte, offset+65535)
	}
	out := make([][]byte, 0, len(bufs))
	for {
		n, err := from.Read(bufs, sizes, offset)
		if errors.Is(err, os.ErrClosed) {
			return
		}
		out = out[:0]
		p.mu.Lock()
		p.reads++
		p.packets += n
		p.maxBatch = max(p.maxBatch, n)
		for i := range n {
			pkt := bufs[i][offset : offset+sizes[i]]
			if msg := checkPacket(pkt); msg != "" {
				p.bad = append(p.bad, msg)
			}
			out = append(out, bufs[i][:offset+sizes[i]])
		}
		p.mu.Unlock()
		if _, err := to.Write(out, offset); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// checkPacket returns what is wrong with an IP packet Read returned: longer
// than the MTU, or a bad IPv4 header or TCP checksum.
func checkPacket(p []byte) string {
	if len(p) > testMTU {
		return "longer than the MTU"
	}
	var tcpHdr header.TCP
	var xsum uint16
	switch header.IPVersion(p) {
	case header.IPv4Version:
		ip := header.IPv4(p)
		if !ip.IsValid(len(p)) || ip.CalculateChecksum() != 0xffff || int(ip.TotalLength()) != len(p) {
			return "bad IPv4 header"
		}
		tcpHdr = ip.Payload()
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcpHdr)))
	case header.IPv6Version:
		ip := header.IPv6(p)
		if !ip.IsValid(len(p)) || int(ip.PayloadLength())+header.IPv6MinimumSize != len(p) {
			return "bad IPv6 header"
		}
		tcpHdr = ip.Payload()
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcpHdr)))
	default:
		return "not IP"
	}
	if checksum.Checksum(tcpHdr, xsum) != 0xffff {
		return "bad TCP checksum"
	}
	return ""
}

// TestTransfer sends a seeded stream from one Device's netstack to
// another's, over IPv4 and IPv6, and checks that the bytes arrive intact,
// that Read cut the sender's TSO packets into batches of valid segments,
// and that the receiver merged them.
func TestTransfer(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to string
		batch    int
	}{
		{"IPv4", "10.0.0.1", "10.0.0.2", 0},
		{"IPv6", "fd00::1", "fd00::2", 0},
		// A TSO packet of 64 KiB is cut into more segments than 8
		// buffers hold: the rest wait for the next Read.
		{"IPv4 batch 8", "10.0.0.1", "10.0.0.2", 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sa, da := newTestStack(t, Options{MTU: testMTU, BatchSize: tc.batch}, tc.from)
			sb, db := newTestStack(t, Options{MTU: testMTU}, tc.to)
			var pumps sync.WaitGroup
			ab, ba := &pump{}, &pump{}
			pumps.Add(2)
			go ab.run(da, db, &pumps)
			go ba.run(db, da, &pumps)
			defer func() {
				da.Close()
				db.Close()
				pumps.Wait()
				sa.Destroy()
				sb.Destroy()
			}()

			to := netip.MustParseAddr(tc.to)
			proto := ipv4.ProtocolNumber
			if to.Is6() {
				proto = ipv6.ProtocolNumber
			}
			dst := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(to.AsSlice()), Port: 80}
			ln, err := gonet.ListenTCP(sb, dst, proto)
			require.NoError(t, err)
			defer ln.Close()

			const size = 4 << 20
			got := make(chan [32]byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- [32]byte{}
					return
				}
				defer c.Close()
				h := sha256.New()
				io.Copy(h, io.LimitReader(c, size))
				got <- [32]byte(h.Sum(nil))
			}()

			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := gonet.DialContextTCP(ctx, sa, dst, proto)
			require.NoError(t, err)
			defer c.Close()
			h := sha256.New()
			_, err = io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
			require.NoError(t, err)
			select {
			case sum := <-got:
				require.Equal(t, [32]byte(h.Sum(nil)), sum, "SHA-256 of what arrived")
			case <-ctx.Done():
				t.Fatal("hang guard: the transfer did not end")
			}

			ab.mu.Lock()
			defer ab.mu.Unlock()
			assert.Empty(t, ab.bad, "packets the sender's Read returned")
			assert.Greater(t, ab.maxBatch, 1, "Read returned one packet at a time: TSO packets were not cut into batches")
			attached := db.link.gate.Dispatcher()
			require.NotNil(t, attached)
			assert.Implements(t, (*rxbatch.BytesDispatcher)(nil), attached, "Write does not use the engine's bytes path")
			st := db.Stats()
			assert.NotZero(t, st.MergedPackets, "the receiver merged nothing: %+v", st)
			assert.Zero(t, st.PassBadChecksum, "segments with bad checksums reached the receiver")
		})
	}
}

func TestNewRejectsOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"no MTU", Options{}},
		{"MTU below IPv6's minimum", Options{MTU: 1000}},
		{"MTU past an IP packet", Options{MTU: 70000}},
		{"negative batch", Options{MTU: testMTU, BatchSize: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := stack.New(stack.Options{NetworkProtocols: []stack.NetworkProtocolFactory{ipv4.NewProtocol}})
			defer s.Destroy()
			_, err := New(s, 1, tc.opts)
			require.ErrorIs(t, err, ErrInvalidOptions)
		})
	}
}

// TestCloseReleases closes a device while a TSO packet is cut halfway and
// more may be queued for Read; the leak checker in TestMain fails the
// package if a reference is left.
func TestCloseReleases(t *testing.T) {
	sa, da := newTestStack(t, Options{MTU: testMTU}, "10.0.0.1")
	defer sa.Destroy()
	sb, db := newTestStack(t, Options{MTU: testMTU}, "10.0.0.2")
	defer sb.Destroy()
	defer db.Close()
	dst := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(netip.MustParseAddr("10.0.0.2").AsSlice()), Port: 80}
	ln, err := gonet.ListenTCP(sb, dst, ipv4.ProtocolNumber)
	require.NoError(t, err)
	defer ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dialed := make(chan *gonet.TCPConn, 1)
	go func() {
		c, _ := gonet.DialContextTCP(ctx, sa, dst, ipv4.ProtocolNumber)
		dialed <- c
	}()
	bufs := [][]byte{make([]byte, testMTU), make([]byte, testMTU)}
	sizes := make([]int, len(bufs))
	move := func(from, to *Device, want uint8) {
		n, err := from.Read(bufs[:1], sizes, 0)
		require.NoError(t, err)
		require.Equal(t, 1, n)
		require.Equal(t, header.TCPFlags(want), header.TCP(header.IPv4(bufs[0][:sizes[0]]).Payload()).Flags())
		_, err = to.Write([][]byte{bufs[0][:sizes[0]]}, 0)
		require.NoError(t, err)
	}
	move(da, db, uint8(header.TCPFlagSyn))
	move(db, da, uint8(header.TCPFlagSyn|header.TCPFlagAck))
	move(da, db, uint8(header.TCPFlagAck))
	c := <-dialed
	require.NotNil(t, c)
	defer c.Close()
	_, err = c.Write(make([]byte, 64<<10))
	require.NoError(t, err)

	n, err := da.Read(bufs, sizes, 0)
	require.NoError(t, err)
	require.Equal(t, 2, n, "two segments of a TSO packet")
	require.Empty(t, checkPacket(bufs[0][:sizes[0]]))
	require.Empty(t, checkPacket(bufs[1][:sizes[1]]))

	require.NoError(t, da.Close())
	_, err = da.Read(bufs, sizes, 0)
	assert.ErrorIs(t, err, os.ErrClosed)
	_, err = da.Write([][]byte{bufs[0][:sizes[0]]}, 0)
	assert.ErrorIs(t, err, os.ErrClosed)
}
