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

// Stats are the proxy's counters.
type Stats struct {
	Accepted   uint64 // connections relayed
	Active     int64  // connections being relayed now
	DialFailed uint64 // connections refused because their destination was not reached
	BytesUp    uint64 // bytes relayed from TUN clients to destinations
	BytesDown  uint64 // bytes relayed from destinations to TUN clients
}

// Proxy is a running proxy. Its methods are safe for concurrent use.
type Proxy struct {
	cfg   Config
	s     *stack.Stack
	link  stack.LinkEndpoint // the NIC's endpoint
	lower stack.LinkEndpoint // the endpoint on the fd
	lro   *lroendpoint.Endpoint
	fd    *fdbased.Endpoint

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// conns are the connections being relayed; nil once closed.
	// +checklocks:mu
	conns map[*relay]struct{}

	accepted, dialFailed, up, down atomic.Uint64
	active                         atomic.Int64
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

// newStack builds netstack on p.link: it takes every packet whatever its
// destination (promiscuous) and answers from that destination (spoofing),
// hands every TCP connection to p.forward, and routes everything back out
// of the TUN device.
func (p *Proxy) newStack() error {
	p.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	rbuf := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	sbuf := tcpip.TCPSendBufferSizeRangeOption{Min: 4096, Default: 1 << 20, Max: 8 << 20}
	for _, opt := range []tcpip.SettableTransportProtocolOption{&sack, &moderate, &rbuf, &sbuf} {
		if err := p.s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			p.s.Destroy()
			return fmt.Errorf("tunproxy: set TCP option %T: %s", opt, err)
		}
	}
	// The handler goes in before the NIC, which starts delivering at
	// once: netstack reads it without a lock.
	fwd := tcp.NewForwarder(p.s, 0, p.cfg.MaxInFlight, p.forward)
	p.s.SetTransportProtocolHandler(tcp.ProtocolNumber, fwd.HandlePacket)
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
	remote, err := p.cfg.Dial(ctx, "tcp", dst)
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
		r.Complete(true)
		remote.Close()
		return
	}
	r.Complete(false)
	rl := &relay{local: gonet.NewTCPConn(&wq, ep), remote: remote}
	if !p.track(rl, true) {
		rl.close()
		return
	}
	p.accepted.Add(1)
	p.active.Add(1)
	rl.run(&p.up, &p.down)
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
	local  *gonet.TCPConn
	remote net.Conn
	once   sync.Once
}

// bufPool holds the copy buffers, one per direction of each connection
// while it copies.
var bufPool = sync.Pool{New: func() any { return new([64 << 10]byte) }}

// run copies both ways until both ends have closed their sending halves,
// passing each half-close on, as the client and the destination would
// have seen it without the proxy; an error in either direction closes
// both connections at once.
func (rl *relay) run(up, down *atomic.Uint64) {
	var wg sync.WaitGroup
	wg.Go(func() { rl.copy(rl.remote, rl.local, up) })
	rl.copy(rl.local, rl.remote, down)
	wg.Wait()
	rl.close()
}

// copy copies from src to dst until src's sending half closes, then
// closes dst's.
func (rl *relay) copy(dst, src net.Conn, n *atomic.Uint64) {
	buf := bufPool.Get().(*[64 << 10]byte)
	defer bufPool.Put(buf)
	for {
		m, rerr := src.Read(buf[:])
		if m > 0 {
			if _, werr := dst.Write(buf[:m]); werr != nil {
				rl.close()
				return
			}
			n.Add(uint64(m))
		}
		if errors.Is(rerr, io.EOF) {
			if hc, ok := dst.(halfCloser); ok && hc.CloseWrite() == nil {
				return
			}
			rl.close()
			return
		}
		if rerr != nil {
			rl.close()
			return
		}
	}
}

// close closes both connections, once.
func (rl *relay) close() {
	rl.once.Do(func() {
		rl.local.Close()
		rl.remote.Close()
	})
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted:   p.accepted.Load(),
		Active:     p.active.Load(),
		DialFailed: p.dialFailed.Load(),
		BytesUp:    p.up.Load(),
		BytesDown:  p.down.Load(),
	}
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

// Close stops accepting, closes every relayed connection, and destroys
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
		rl.close()
	}
	// Detach first, without netstack's lock: gVisor's fdbased waits in
	// Attach(nil) for a packet being delivered, which may need that lock
	// (a reset's route lookup), and Stack.Destroy holds it.
	p.link.Attach(nil)
	p.s.Destroy()
	p.wg.Wait()
}
