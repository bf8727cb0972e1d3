package tests

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// The two ends of a teardown test: the receiver, whose NIC is on the
// endpoint under test, and its peer. Documentation addresses (RFC 5737)
// and locally administered MACs: they exist only inside the test's
// stacks and its network namespaces.
var (
	tdAddrRx   = tcpip.AddrFrom4([4]byte{192, 0, 2, 2})
	tdAddrPeer = tcpip.AddrFrom4([4]byte{192, 0, 2, 1})
	tdMACRx    = tcpip.LinkAddress("\x02\x00\x00\x00\x0d\x02")
	tdMACPeer  = tcpip.LinkAddress("\x02\x00\x00\x00\x0d\x01")
)

const (
	// tdNIC is the one NIC of each teardown stack.
	tdNIC tcpip.NICID = 1
	// tdPort is the port both stacks listen on.
	tdPort = 5201
	// tdMTU is every teardown link's MTU.
	tdMTU = 1500
)

// newTeardownStack returns a stack with IPv4, ARP and TCP, one NIC on ep
// owning addr, every destination routed out of it, and, when ethernet is
// set, peer's MAC as a static neighbor, so that no ARP exchange delays
// the first connection.
func newTeardownStack(ep stack.LinkEndpoint, addr, peer tcpip.Address, peerMAC tcpip.LinkAddress, ethernet bool) (*stack.Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	fail := func(what string, err tcpip.Error) (*stack.Stack, error) {
		s.Destroy()
		return nil, fmt.Errorf("%s: %s", what, err)
	}
	// Small buffers: a writer then waits for the network instead of
	// copying megabytes into its send buffer first, which under -race
	// delays the first segments by a tenth of a second.
	sack := tcpip.TCPSACKEnabled(true)
	sbuf := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 64 << 10, Max: 256 << 10}
	rbuf := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 64 << 10, Max: 256 << 10}
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &sbuf, &rbuf} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fail(fmt.Sprintf("TCP option %T", opt), err)
		}
	}
	if err := s.CreateNIC(tdNIC, ep); err != nil {
		return fail("create NIC", err)
	}
	pa := tcpip.ProtocolAddress{Protocol: header.IPv4ProtocolNumber, AddressWithPrefix: addr.WithPrefix()}
	if err := s.AddProtocolAddress(tdNIC, pa, stack.AddressProperties{}); err != nil {
		return fail("add address", err)
	}
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: tdNIC}})
	if ethernet {
		if err := s.AddStaticNeighbor(tdNIC, header.IPv4ProtocolNumber, peer, peerMAC); err != nil {
			return fail("static neighbor", err)
		}
	}
	return s, nil
}

// traffic is TCP traffic in both directions between two stacks: each
// listens, and each dials a few connections to the other and writes to
// them until stopped, while the accepting side reads and counts.
type traffic struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// got counts the bytes read by each side: [0] the receiver, [1] the
	// peer.
	got [2]atomic.Uint64

	mu sync.Mutex
	// +checklocks:mu
	closers []func()
	// +checklocks:mu
	stopped bool
}

// trafficChunk is what a writer hands to Write at a time.
const trafficChunk = 16 << 10

// trafficCap bounds what one connection writes, so that every loop of
// the test is bounded in count as well as in time.
const trafficCap = 256 << 20

// startTraffic listens on both stacks and dials conns connections each
// way. Every connection gets deadline as a hang guard. Errors of the
// traffic itself are expected (teardown cuts it short) and ignored.
func startTraffic(rx, peer *stack.Stack, conns int, deadline time.Time) (*traffic, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	tr := &traffic{ctx: ctx, cancel: cancel}
	sides := [2]struct {
		s          *stack.Stack
		addr, peer tcpip.Address
	}{{rx, tdAddrRx, tdAddrPeer}, {peer, tdAddrPeer, tdAddrRx}}
	var lns [2]*gonet.TCPListener
	for i, sd := range sides {
		ln, err := gonet.ListenTCP(sd.s, tcpip.FullAddress{NIC: tdNIC, Addr: sd.addr, Port: tdPort}, header.IPv4ProtocolNumber)
		if err != nil {
			tr.stop(time.Second)
			return nil, fmt.Errorf("listen on side %d: %w", i, err)
		}
		lns[i] = ln
		tr.track(func() { ln.Shutdown(); ln.Close() })
	}
	for i, sd := range sides {
		ln := lns[i]
		tr.wg.Go(func() { tr.accept(ln, &tr.got[i], deadline) })
		for range conns {
			tr.wg.Go(func() { tr.dial(sd.s, sd.peer, deadline) })
		}
	}
	return tr, nil
}

// track registers close to run at stop, or runs it now if stop ran.
func (tr *traffic) track(close func()) {
	tr.mu.Lock()
	if tr.stopped {
		tr.mu.Unlock()
		close()
		return
	}
	tr.closers = append(tr.closers, close)
	tr.mu.Unlock()
}

// accept accepts connections until the listener fails, reading each on
// a goroutine of its own into got.
func (tr *traffic) accept(ln *gonet.TCPListener, got *atomic.Uint64, deadline time.Time) {
	for tr.ctx.Err() == nil {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		c.SetDeadline(deadline)
		tr.track(func() { c.Close() })
		tr.wg.Go(func() {
			buf := make([]byte, 64<<10)
			for total := 0; total < 2*trafficCap; {
				n, err := c.Read(buf)
				got.Add(uint64(n))
				total += n
				if err != nil {
					return
				}
			}
		})
	}
}

// dial connects from s to addr and writes until the traffic stops, the
// connection fails or trafficCap bytes are written.
func (tr *traffic) dial(s *stack.Stack, addr tcpip.Address, deadline time.Time) {
	c, err := gonet.DialContextTCP(tr.ctx, s, tcpip.FullAddress{NIC: tdNIC, Addr: addr, Port: tdPort}, header.IPv4ProtocolNumber)
	if err != nil {
		return
	}
	c.SetDeadline(deadline)
	tr.track(func() { c.Close() })
	buf := make([]byte, trafficChunk)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for total := 0; total < trafficCap && tr.ctx.Err() == nil; {
		n, err := c.Write(buf)
		total += n
		if err != nil {
			return
		}
	}
}

// flowing waits until each side has read at least n bytes, or limit has
// passed, and reports whether they had.
func (tr *traffic) flowing(n uint64, limit time.Duration) bool {
	end := time.Now().Add(limit)
	for time.Now().Before(end) {
		if tr.got[0].Load() >= n && tr.got[1].Load() >= n {
			return true
		}
		time.Sleep(200 * time.Microsecond)
	}
	return false
}

// stop ends the traffic: it cancels dials and writes, closes every
// listener and connection, and waits at most limit for the traffic's
// goroutines. It reports whether they all returned. Closing runs on a
// goroutine of its own too: on a stack that hung with its lock held, a
// close may block forever.
func (tr *traffic) stop(limit time.Duration) bool {
	tr.cancel()
	tr.mu.Lock()
	tr.stopped = true
	closers := tr.closers
	tr.closers = nil
	tr.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, c := range closers {
			c()
		}
		tr.wg.Wait()
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// errHang is what runBounded reports for a function that did not return
// in time.
var errHang = errors.New("did not return in time")

// runBounded runs f on a goroutine of its own and waits at most limit for
// it. It returns errHang if f is still running then (it is left running:
// nothing can stop it), or an error carrying the panic and its stack if f
// panicked.
func runBounded(limit time.Duration, f func()) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		f()
		done <- nil
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return errHang
	}
}

// allStacks returns the stacks of every goroutine, as a crash would print
// them.
func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) || len(buf) >= 64<<20 {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

// settleGoroutines waits at most limit for the number of goroutines to
// fall to base or below, and returns the last count seen.
func settleGoroutines(base int, limit time.Duration) int {
	end := time.Now().Add(limit)
	for {
		n := runtime.NumGoroutine()
		if n <= base || time.Now().After(end) {
			return n
		}
		time.Sleep(time.Millisecond)
	}
}

// repeatedLeakCheck runs gVisor's leak checker now and returns its report
// as an error instead of panicking, or nil when nothing refcounted (a
// PacketBuffer, a buffer chunk) is live. Only when nothing that holds
// such objects runs: no stack, no endpoint, no other test.
func repeatedLeakCheck() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	refs.DoRepeatedLeakCheck()
	return nil
}
