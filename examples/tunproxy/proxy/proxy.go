//go:build linux

// Package proxy is a transparent TCP proxy on netstack, shaped like
// tun2socks: netstack reads the IP packets of a TUN device, accepts every
// TCP connection whatever its destination (promiscuous mode and spoofing,
// gVisor's tcp.Forwarder), and relays its bytes over a connection the
// host's own stack dials to the original destination. Path chooses how
// netstack is fed, with or without netlro, so the ways can be compared on
// the same traffic.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gfdbased "gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// Path is the way packets go from the TUN device into netstack.
type Path string

// The receive paths, in the order a comparison runs them.
const (
	// PathNetstack is gVisor's fdbased in readv mode, one packet per
	// read and no offload: tun2socks on Linux.
	PathNetstack Path = "netstack"
	// PathGVisorGRO is PathNetstack with gVisor's GRO, and
	// RXChecksumOffload, without which netstack drops the merged IPv4
	// packets whose checksums gVisor's GRO leaves stale.
	PathGVisorGRO Path = "gvisor-gro"
	// PathNetlroGVisor is gVisor's fdbased wrapped by lroendpoint: it
	// ends no batch, so the engine flushes on its timer.
	PathNetlroGVisor Path = "netlro-gvisor"
	// PathNetlroRead is this project's fdbased, read(2) per frame, wrapped
	// by lroendpoint, with a Flush at each batch end.
	PathNetlroRead Path = "netlro-read"
	// PathNetlroURing is PathNetlroRead reading with io_uring.
	PathNetlroURing Path = "netlro-uring"
	// PathNetlroVNet is PathNetlroRead on a device opened with
	// IFF_VNET_HDR and TSO: the kernel sends super-packets of up to
	// 64 KiB, and netstack sends them back the same way.
	PathNetlroVNet Path = "netlro-vnet"
)

// Paths lists every Path, in the order a comparison runs them.
var Paths = []Path{PathNetstack, PathGVisorGRO, PathNetlroGVisor, PathNetlroRead, PathNetlroURing, PathNetlroVNet}

// DefaultPath is the path the example runs unless told otherwise.
const DefaultPath = PathNetlroVNet

// ParsePath returns the Path named s.
func ParsePath(s string) (Path, error) {
	names := make([]string, len(Paths))
	for i, p := range Paths {
		if string(p) == s {
			return p, nil
		}
		names[i] = string(p)
	}
	return "", fmt.Errorf("tunproxy: unknown path %q, want one of %s", s, strings.Join(names, ", "))
}

// VNetHdr reports whether p needs the TUN device opened with
// IFF_VNET_HDR.
func (p Path) VNetHdr() bool { return p == PathNetlroVNet }

// LRO reports whether p runs netlro.
func (p Path) LRO() bool { return strings.HasPrefix(string(p), "netlro") }

// DefaultMaxFlows is the flow table size the proxy gives netlro unless
// told otherwise: one session per frame of this project's fdbased batch.
// A batch can carry no more flows than frames, so no session is evicted
// by another flow of its own batch however many connections run, and a
// larger table gains nothing on the batch-end paths, where every batch
// end flushes the table. The engine's own default (8, inet_lro's) suits
// a host with a few bulk flows; a proxy carries many at once.
const DefaultMaxFlows = fdbased.DefaultBatchSize

// DefaultMaxInFlight is the number of connections that may be half open
// at once (dialing their destination) unless told otherwise.
const DefaultMaxInFlight = 2048

// dialTimeout bounds a dial to a destination; the client's SYN is
// answered only after it.
const dialTimeout = 10 * time.Second

// Config says how to run a Proxy.
type Config struct {
	// FD is the TUN device, opened without IFF_VNET_HDR unless
	// Path.VNetHdr. The caller closes it after Close.
	FD int
	// Path chooses how packets reach netstack. "" means DefaultPath.
	Path Path
	// MTU is the device's MTU. 0 means 1500.
	MTU uint32
	// LRO configures the engine of the netlro paths; MaxFlows 0 means
	// DefaultMaxFlows here.
	LRO lro.Config
	// Dial connects to a connection's original destination. nil means
	// the host's stack (a net.Dialer).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// MaxInFlight is the most connections being dialed at once; SYNs
	// beyond it are ignored, and the client retries. 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
	// Logf, if not nil, gets one line per failed dial.
	Logf func(format string, args ...any)
}

// Stats are the proxy's counters. The gauges (Dialing, Active,
// HalfClosed) say how many connections the proxy holds now and in which
// state; Proxy.Endpoints says what netstack holds.
type Stats struct {
	Accepted   uint64 // connections relayed
	Dialing    int64  // connections whose destination is being dialed now; the client's SYN is answered after
	Active     int64  // connections being relayed now, HalfClosed included
	HalfClosed int64  // of Active, those one side of which has finished sending (its half-close passed on) while the other still sends
	Aborted    uint64 // relays that ended by an error or a reset in either direction, not by both sides closing their sending halves
	DialFailed uint64 // connections refused because their destination was not reached
	// HandshakeFailed counts connections whose destination was reached
	// but whose handshake with the client then failed (the client reset
	// or gave up, or netstack refused the endpoint); the client got a
	// reset and the destination's connection was closed.
	HandshakeFailed uint64
	// SYNsDeferred counts clients' SYNs dropped because netstack still
	// held an endpoint of their ports, about to go; each client sent its
	// SYN again (see synGate).
	SYNsDeferred uint64
	BytesUp      uint64 // bytes relayed from TUN clients to destinations
	BytesDown    uint64 // bytes relayed from destinations to TUN clients
	Netstack     NetstackStats
}

// NetstackStats are the counters of netstack's TCP (stack.Stats().TCP)
// that tell whether clients' connections were taken, and how they ended.
type NetstackStats struct {
	Established    uint64 // connections in ESTABLISHED or CLOSE-WAIT now (CurrentEstablished)
	SYNsDropped    uint64 // SYNs dropped because MaxInFlight connections were being dialed (ForwardMaxInFlightDrop)
	ResetsSent     uint64 // resets netstack sent (ResetsSent)
	ResetsReceived uint64 // resets netstack received (ResetsReceived)
	Retransmits    uint64 // segments netstack sent again (Retransmits)
	Timeouts       uint64 // retransmission timeouts (Timeouts)
}

// Proxy is a running proxy. Its methods are safe for concurrent use.
type Proxy struct {
	cfg   Config
	s     *stack.Stack
	link  stack.LinkEndpoint // the NIC's endpoint
	lower stack.LinkEndpoint // the endpoint on the fd
	lro   *lroendpoint.Endpoint
	fd    *fdbased.Endpoint
	gate  *synGate // p.link once the stack is built

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// conns are the connections being relayed; nil once closed.
	// +checklocks:mu
	conns map[*relay]struct{}

	accepted, aborted, dialFailed, handshakeFailed, up, down atomic.Uint64
	dialing, active, halfClosed                              atomic.Int64
}

// New starts a proxy on cfg.FD.
func New(cfg Config) (*Proxy, error) {
	if cfg.Path == "" {
		cfg.Path = DefaultPath
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if cfg.LRO.MaxFlows == 0 {
		cfg.LRO.MaxFlows = DefaultMaxFlows
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	p := &Proxy{cfg: cfg, conns: make(map[*relay]struct{})}
	if err := p.newLink(); err != nil {
		return nil, err
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	if err := p.newStack(); err != nil {
		p.cancel()
		p.link.Close()
		return nil, err
	}
	return p, nil
}

// newLink builds the link endpoint of the configured path.
func (p *Proxy) newLink() error {
	cfg := p.cfg
	var err error
	switch cfg.Path {
	case PathNetstack, PathGVisorGRO, PathNetlroGVisor:
		gro := cfg.Path == PathGVisorGRO
		p.lower, err = gfdbased.New(&gfdbased.Options{
			FDs:                []int{cfg.FD},
			MTU:                cfg.MTU,
			PacketDispatchMode: gfdbased.Readv,
			GRO:                gro,
			RXChecksumOffload:  gro,
		})
		if err != nil {
			return fmt.Errorf("tunproxy: %s: gVisor fdbased: %w", cfg.Path, err)
		}
	case PathNetlroRead, PathNetlroURing, PathNetlroVNet:
		src := fdbased.SourceAuto // the default path's: read(2), for VNetHdr
		switch cfg.Path {
		case PathNetlroRead:
			src = fdbased.SourceRead
		case PathNetlroURing:
			src = fdbased.SourceIOUring
		}
		ep, err := fdbased.New(&fdbased.Options{
			FDs:     []int{cfg.FD},
			MTU:     cfg.MTU,
			Source:  src,
			VNetHdr: cfg.Path.VNetHdr(),
		})
		if err != nil {
			return fmt.Errorf("tunproxy: %s: %w", cfg.Path, err)
		}
		p.lower, p.fd = ep, ep
	default:
		return fmt.Errorf("tunproxy: unknown path %q", cfg.Path)
	}
	p.link = p.lower
	if !cfg.Path.LRO() {
		return nil
	}
	p.lro, err = lroendpoint.New(p.lower, cfg.LRO)
	if err != nil {
		p.lower.Close()
		return fmt.Errorf("tunproxy: %s: %w", cfg.Path, err)
	}
	p.link = p.lro
	return nil
}

// nicID is the proxy stack's one NIC.
const nicID tcpip.NICID = 1

// timeWait is how long netstack keeps an endpoint in TIME-WAIT
// (tcpip.TCPTimeWaitTimeoutOption): not at all, where gVisor's default is
// 60 s.
//
// netstack closes first whenever the destination does (an HTTP server
// without keep-alive, for one): the relay passes the destination's FIN
// on, the client answers with its own, and netstack's endpoint enters
// TIME-WAIT. The client, which closed second, keeps nothing and uses the
// same port again once its choice of ephemeral ports comes round (Linux
// walks its range in random steps: after about 3,500 connections to one
// destination). Its SYN lands on the TIME-WAIT endpoint, and gVisor
// passes such a SYN on to a listening endpoint only (connect.go,
// handleTimeWaitSegments); a tcp.Forwarder is none, so the SYN is
// dropped without a reset or a counter, and the client retries until
// TIME-WAIT ends. With the default, every path stopped taking
// connections after about 3,500 of them, for a minute (issue 21).
// tcpip.TCPTimeWaitReuseOption does not help: it is about the ports
// netstack's own connect picks, which a proxy never uses.
//
// A TIME-WAIT in a proxy's netstack protects nothing. It would answer a
// client's FIN sent again because netstack's last ACK was lost (a TUN
// device loses nothing but on a full queue, and without it the client,
// which already has all its data, gets a reset), and keep a late
// duplicate of an old connection out of a new one on the same ports (a
// TUN device holds nothing back). The client's stack keeps its own
// TIME-WAIT when it closes first, and the destination's stack keeps the
// real one when the destination closes first.
//
// tcpip.TCPLingerTimeoutOption (how long an endpoint closed in FIN-WAIT-2
// waits for the client's FIN, 60 s) is left alone: the relay closes an
// endpoint only after both sides have closed their sending halves, and
// resets it otherwise, so netstack is never left waiting for a FIN.
const timeWait = 0

// newStack builds netstack on p.link: it takes every packet whatever its
// destination (promiscuous) and answers from that destination (spoofing),
// hands every TCP connection to p.forward, keeps no TIME-WAIT (timeWait
// says why a proxy must not), and routes everything back out of the TUN
// device.
func (p *Proxy) newStack() error {
	p.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rbuf := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	sbuf := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	tw := tcpip.TCPTimeWaitTimeoutOption(timeWait)
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &rbuf, &sbuf, &tw} {
		if err := p.s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			p.s.Destroy()
			return fmt.Errorf("tunproxy: set TCP option %T: %s", opt, err)
		}
	}
	// The handler goes in before the NIC, which starts delivering at
	// once: netstack reads it without a lock.
	fwd := tcp.NewForwarder(p.s, 0, p.cfg.MaxInFlight, p.forward)
	p.s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
	p.gate = newSYNGate(p.link, p.s)
	p.link = p.gate
	if err := p.s.CreateNIC(nicID, p.link); err != nil {
		p.s.Destroy()
		return fmt.Errorf("tunproxy: create NIC: %s", err)
	}
	if err := p.s.SetPromiscuousMode(nicID, true); err != nil {
		p.s.Destroy()
		return fmt.Errorf("tunproxy: promiscuous mode: %s", err)
	}
	if err := p.s.SetSpoofing(nicID, true); err != nil {
		p.s.Destroy()
		return fmt.Errorf("tunproxy: spoofing: %s", err)
	}
	p.s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	return nil
}

// forward is the tcp.Forwarder's handler. It runs on the goroutine that
// delivered the SYN, so the dial, which waits, goes on a goroutine of its
// own.
func (p *Proxy) forward(r *tcp.ForwarderRequest) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		r.Complete(true)
		return
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.serve(r)
	}()
}

// serve dials the destination of r's connection, completes the handshake
// with the client (or resets it when the destination cannot be reached,
// as the client would have seen without the proxy), and relays.
func (p *Proxy) serve(r *tcp.ForwarderRequest) {
	id := r.ID()
	dst := net.JoinHostPort(id.LocalAddress.String(), strconv.Itoa(int(id.LocalPort)))
	ctx, cancel := context.WithTimeout(p.ctx, dialTimeout)
	p.dialing.Add(1)
	remote, err := p.cfg.Dial(ctx, "tcp", dst)
	p.dialing.Add(-1)
	cancel()
	if err != nil {
		p.dialFailed.Add(1)
		if p.cfg.Logf != nil {
			p.cfg.Logf("tunproxy: dial %s for %s: %v", dst, net.JoinHostPort(id.RemoteAddress.String(), strconv.Itoa(int(id.RemotePort))), err)
		}
		r.Complete(true)
		return
	}
	var wq waiter.Queue
	ep, terr := r.CreateEndpoint(&wq)
	if terr != nil {
		// The client gave up meanwhile, or the stack is closing.
		p.handshakeFailed.Add(1)
		if p.cfg.Logf != nil {
			p.cfg.Logf("tunproxy: handshake with %s for %s: %v", net.JoinHostPort(id.RemoteAddress.String(), strconv.Itoa(int(id.RemotePort))), dst, terr)
		}
		r.Complete(true)
		remote.Close()
		return
	}
	r.Complete(false)
	rl := &relay{ep: ep, local: gonet.NewTCPConn(&wq, ep), remote: remote}
	if !p.track(rl, true) {
		rl.abort()
		return
	}
	p.accepted.Add(1)
	p.active.Add(1)
	rl.run(p)
	p.active.Add(-1)
	p.track(rl, false)
}

// track adds or removes a relay from the set Close closes, and reports
// false when adding to a closed proxy.
func (p *Proxy) track(rl *relay, add bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	if add {
		p.conns[rl] = struct{}{}
	} else {
		delete(p.conns, rl)
	}
	return true
}

// halfCloser is a connection whose sending half closes on its own: both
// *net.TCPConn and *gonet.TCPConn are.
type halfCloser interface {
	net.Conn
	CloseWrite() error
}

// relay is one proxied connection.
type relay struct {
	ep     tcpip.Endpoint // local's
	local  *gonet.TCPConn
	remote net.Conn
	once   sync.Once
}

// bufPool holds the copy buffers, one per direction of each connection
// while it copies.
var bufPool = sync.Pool{New: func() any { return new([64 << 10]byte) }}

// run copies both ways until both ends have closed their sending halves,
// passing each half-close on, as the client and the destination would
// have seen it without the proxy, and then closes both connections: the
// one that closed last is then in TIME-WAIT at its own end, or about to
// be, and the proxy's side is gone (see the TIME-WAIT notes in newStack).
// An error in either direction (a reset, a write that failed) resets both
// connections at once, so that neither end takes a cut stream for a
// complete one, and nothing is left half-open. It keeps p's HalfClosed
// and Aborted counters.
func (rl *relay) run(p *Proxy) {
	var ended atomic.Int32
	var half, failed atomic.Bool
	end := func(clean bool) {
		if !clean {
			failed.Store(true)
		}
		if ended.Add(1) == 1 && clean {
			half.Store(true)
			p.halfClosed.Add(1)
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() { end(rl.copy(rl.remote, rl.local, &p.up)) })
	end(rl.copy(rl.local, rl.remote, &p.down))
	wg.Wait()
	rl.close()
	if half.Load() {
		p.halfClosed.Add(-1)
	}
	if failed.Load() {
		p.aborted.Add(1)
	}
}

// copy copies from src to dst until src's sending half closes, then
// closes dst's, and reports true; on an error it resets both connections
// and reports false.
func (rl *relay) copy(dst, src net.Conn, n *atomic.Uint64) bool {
	buf := bufPool.Get().(*[64 << 10]byte)
	defer bufPool.Put(buf)
	for {
		m, rerr := src.Read(buf[:])
		if m > 0 {
			if _, werr := dst.Write(buf[:m]); werr != nil {
				rl.abort()
				return false
			}
			n.Add(uint64(m))
		}
		if errors.Is(rerr, io.EOF) {
			if hc, ok := dst.(halfCloser); ok && hc.CloseWrite() == nil {
				return true
			}
			rl.abort()
			return false
		}
		if rerr != nil {
			rl.abort()
			return false
		}
	}
}

// close closes both connections, once, each with a FIN if it has not
// sent one.
func (rl *relay) close() {
	rl.once.Do(func() {
		rl.local.Close()
		rl.remote.Close()
	})
}

// abort resets both connections, once: each is closed with a linger
// time of zero, which sends a reset rather than a FIN and keeps nothing
// (no FIN-WAIT, no TIME-WAIT) at the proxy.
func (rl *relay) abort() {
	rl.once.Do(func() {
		rl.ep.SocketOptions().SetLinger(tcpip.LingerOption{Enabled: true})
		rl.local.Close()
		if tc, ok := rl.remote.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		rl.remote.Close()
	})
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	tcp := p.s.Stats().TCP
	return Stats{
		Accepted:        p.accepted.Load(),
		Dialing:         p.dialing.Load(),
		Active:          p.active.Load(),
		HalfClosed:      p.halfClosed.Load(),
		Aborted:         p.aborted.Load(),
		DialFailed:      p.dialFailed.Load(),
		HandshakeFailed: p.handshakeFailed.Load(),
		SYNsDeferred:    p.gate.deferred.Load(),
		BytesUp:         p.up.Load(),
		BytesDown:       p.down.Load(),
		Netstack: NetstackStats{
			Established:    tcp.CurrentEstablished.Value(),
			SYNsDropped:    tcp.ForwardMaxInFlightDrop.Value(),
			ResetsSent:     tcp.ResetsSent.Value(),
			ResetsReceived: tcp.ResetsReceived.Value(),
			Retransmits:    tcp.Retransmits.Value(),
			Timeouts:       tcp.Timeouts.Value(),
		},
	}
}

// Endpoints counts netstack's TCP endpoints by state, in gVisor's names
// (ESTABLISHED, FIN-WAIT2, TIME-WAIT, LAST-ACK, ...): the relays' and
// those the relays have closed that netstack still keeps. It walks every
// endpoint, so it is for reports, not for a loop. After Close it
// returns nil.
func (p *Proxy) Endpoints() map[string]int {
	if p.ctx.Err() != nil {
		return nil
	}
	m := make(map[string]int)
	for _, ep := range p.s.RegisteredEndpoints() {
		if e, ok := ep.(*tcp.Endpoint); ok {
			m[tcp.EndpointState(e.State()).String()]++
		}
	}
	return m
}

// LROStats returns netlro's counters, and false on a path without it.
func (p *Proxy) LROStats() (lro.Stats, bool) {
	if p.lro == nil {
		return lro.Stats{}, false
	}
	return p.lro.Stats(), true
}

// FDStats returns this project's fdbased counters, and false on a path
// that reads with gVisor's fdbased.
func (p *Proxy) FDStats() (fdbased.Stats, bool) {
	if p.fd == nil {
		return fdbased.Stats{}, false
	}
	return p.fd.Stats(), true
}

// Sources says how this project's fdbased reads the TUN device, and why,
// and returns nil on a path that reads with gVisor's fdbased.
func (p *Proxy) Sources() []fdbased.SourceChoice {
	if p.fd == nil {
		return nil
	}
	return p.fd.Sources()
}

// SetMerging turns netlro's merging off or on while traffic flows
// (lroendpoint.Endpoint.SetMerging), and reports false on a path without
// netlro.
func (p *Proxy) SetMerging(on bool) bool {
	if p.lro == nil {
		return false
	}
	p.lro.SetMerging(on)
	return true
}

// Merging reports whether netlro merges now.
func (p *Proxy) Merging() bool { return p.lro != nil && p.lro.Merging() }

// Close stops accepting, resets every relayed connection, and destroys
// netstack. It waits for the relays to end.
func (p *Proxy) Close() {
	p.mu.Lock()
	conns := p.conns
	p.conns = nil
	p.mu.Unlock()
	if conns == nil {
		return
	}
	p.cancel()
	for rl := range conns {
		rl.abort()
	}
	// Detach first, without netstack's lock: gVisor's fdbased waits in
	// Attach(nil) for a packet being delivered, which may need that lock
	// (a reset's route lookup), and Stack.Destroy holds it.
	p.link.Attach(nil)
	p.s.Destroy()
	p.wg.Wait()
}
