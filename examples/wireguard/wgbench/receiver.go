package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/google/pprof/profile"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/examples/wireguard/lrotun"
	"github.com/netlro/netlro/internal/bench/cputime"
	"github.com/netlro/netlro/lro"
)

// The ways of feeding the receiving netstack, one per table row.
const (
	recvInject    = "wg-netstack"  // wireguard-go's tun/netstack: InjectInbound per packet
	recvPerPacket = "per-packet"   // the same way with its leak fixed: each packet released after delivery
	recvGRO       = "gvisor-gro"   // gVisor's GRO fed and flushed per Write, as Tailscale does
	recvLRO       = "netlro"       // lrotun, checksums verified
	recvLROTrust  = "netlro-trust" // lrotun with TrustChecksums, as row 2 trusts them
)

var receivers = []string{recvInject, recvPerPacket, recvGRO, recvLRO, recvLROTrust}

// childEnv carries the receiver's configuration, as JSON, to the child
// process; a process started with it is the receiver.
const childEnv = "WGBENCH_RECEIVER"

// childConfig is what the receiving process is told.
type childConfig struct {
	Receiver   string
	Key        key    // the receiver's
	PeerPublic string // the sender's public key
	IPv6       bool
	Streams    int
	Bytes      int64  // per stream
	Profile    string // if set, the file to write the receiver's CPU profile to
}

// childResult is what it reports: first a line with Port, at the end one
// with the rest.
type childResult struct {
	Port    int      `json:",omitempty"`
	SHA256  []string `json:",omitempty"` // per stream, in accept order of source port
	Ports   []int    `json:",omitempty"` // the streams' source ports
	Seconds float64  // first accept to last byte
	CPU     float64  // process CPU seconds (user+system) in that time
	Writes  batches  // what wireguard-go handed the TUN device
	// HeldWrites counts the Writes after which the merging way still held
	// data (gVisor's GRO: TCP payload bytes; netlro: packets); HeldMost is
	// the most it held then.
	HeldWrites, HeldMost uint64
	StackPkts            uint64             // packets netstack's IP layer received; 0 if unknown
	Shares               map[string]float64 `json:",omitempty"` // CPU profile share by part
	LRO                  *lro.Stats         `json:",omitempty"`
	Err                  string             `json:",omitempty"`
}

// runChild is the receiving process: it reports its UDP port, accepts
// cfg.Streams connections, reads cfg.Bytes from each, and reports.
func runChild(cfgJSON string, out io.Writer) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
		return fmt.Errorf("receiver config: %w", err)
	}
	enc := json.NewEncoder(out)
	res, err := receive(cfg, func(port int) error { return enc.Encode(childResult{Port: port}) })
	if err != nil {
		res.Err = err.Error()
	}
	return enc.Encode(res)
}

// receiverNet is the receiving end: its TUN device and how to listen and
// count.
type receiverNet struct {
	dev       tun.Device
	listen    func(netip.AddrPort) (net.Listener, error)
	stackPkts func() uint64
	lroStats  func() lro.Stats
	held      func() uint64
	close     func()
}

func newReceiverNet(name string) (*receiverNet, error) {
	addrs := []netip.Addr{netip.MustParseAddr(receiverV4), netip.MustParseAddr(receiverV6)}
	if name == recvInject {
		dev, tnet, err := netstack.CreateNetTUN(addrs, nil, tunnelMTU)
		if err != nil {
			return nil, err
		}
		return &receiverNet{
			dev:    dev,
			listen: func(a netip.AddrPort) (net.Listener, error) { return tnet.ListenTCPAddrPort(a) },
			close:  func() {},
		}, nil
	}
	s, err := newStack()
	if err != nil {
		return nil, err
	}
	r := &receiverNet{
		listen: func(a netip.AddrPort) (net.Listener, error) {
			proto := ipv4.ProtocolNumber
			if a.Addr().Is6() {
				proto = ipv6.ProtocolNumber
			}
			return gonet.ListenTCP(s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(a.Addr().AsSlice()), Port: a.Port()}, proto)
		},
		stackPkts: func() uint64 { return s.Stats().IP.PacketsReceived.Value() },
		close:     s.Destroy,
	}
	switch name {
	case recvGRO, recvPerPacket:
		var d *groDevice
		d, err = newGRODevice(s, 1, tunnelMTU, name == recvGRO)
		if err == nil && name == recvGRO {
			r.held = d.Held
		}
		r.dev = d
	case recvLRO, recvLROTrust:
		var d *lrotun.Device
		d, err = lrotun.New(s, 1, lrotun.Options{MTU: tunnelMTU, TrustChecksums: name == recvLROTrust})
		if err == nil {
			r.lroStats = d.Stats
			r.held = func() uint64 { return d.Stats().Held() }
		}
		r.dev = d
	default:
		err = fmt.Errorf("unknown receiver %q", name)
	}
	if err != nil {
		s.Destroy()
		return nil, err
	}
	if err := addAddresses(s, receiverV4, receiverV6); err != nil {
		s.Destroy()
		return nil, err
	}
	return r, nil
}

// newStack makes a stack configured as wireguard-go's tun/netstack makes
// its own (IPv4, IPv6, TCP, SACK on), so that the rows differ only in how
// packets reach it.
func newStack() (*stack.Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		s.Destroy()
		return nil, fmt.Errorf("enable SACK: %s", err)
	}
	return s, nil
}

func addAddresses(s *stack.Stack, v4, v6 string) error {
	for _, a := range []string{v4, v6} {
		addr := netip.MustParseAddr(a)
		proto := ipv4.ProtocolNumber
		if addr.Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddrFromSlice(addr.AsSlice()).WithPrefix()}
		if err := s.AddProtocolAddress(1, pa, stack.AddressProperties{}); err != nil {
			return fmt.Errorf("add address %s: %s", a, err)
		}
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: 1},
		{Destination: header.IPv6EmptySubnet, NIC: 1},
	})
	return nil
}

func receive(cfg childConfig, ready func(port int) error) (childResult, error) {
	var res childResult
	// Goroutines inherit pprof labels: everything the receiving stack
	// starts (TCP's processors) is netstack's.
	var rn *receiverNet
	var err error
	pprof.Do(context.Background(), netstackLabels, func(context.Context) {
		rn, err = newReceiverNet(cfg.Receiver)
	})
	if err != nil {
		return res, err
	}
	defer rn.close()
	dev := &counted{Device: rn.dev, held: rn.held}
	wg, port, err := newWG(dev, conn.NewDefaultBind(), cfg.Key.Private, cfg.PeerPublic, "", []string{senderV4 + "/32", senderV6 + "/128"})
	if err != nil {
		return res, err
	}
	defer wg.Close()

	addr := receiverV4
	if cfg.IPv6 {
		addr = receiverV6
	}
	ln, err := rn.listen(netip.AddrPortFrom(netip.MustParseAddr(addr), dataPort))
	if err != nil {
		return res, fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	if err := ready(port); err != nil {
		return res, err
	}

	var prof bytes.Buffer
	var start time.Time
	var cpu0 float64
	var stack0 uint64
	res.SHA256 = make([]string, cfg.Streams)
	res.Ports = make([]int, cfg.Streams)
	errs := make(chan error, cfg.Streams)
	var readers sync.WaitGroup
	appLabels := pprof.Labels("part", "app")
	for i := range cfg.Streams {
		c, err := ln.Accept()
		if err != nil {
			return res, fmt.Errorf("accept: %w", err)
		}
		if i == 0 {
			start, cpu0 = time.Now(), cputime.Total().Seconds()
			if rn.stackPkts != nil {
				stack0 = rn.stackPkts()
			}
			if err := pprof.StartCPUProfile(&prof); err != nil {
				return res, err
			}
		}
		res.Ports[i] = c.RemoteAddr().(*net.TCPAddr).Port
		readers.Add(1)
		go pprof.Do(context.Background(), appLabels, func(context.Context) {
			defer readers.Done()
			defer c.Close()
			h := sha256.New()
			n, err := io.CopyBuffer(h, io.LimitReader(c, cfg.Bytes), make([]byte, 256<<10))
			if err == nil && n != cfg.Bytes {
				err = fmt.Errorf("stream %d: %d of %d bytes", i, n, cfg.Bytes)
			}
			res.SHA256[i] = hex.EncodeToString(h.Sum(nil))
			errs <- err
		})
	}
	readers.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.CPU = cputime.Total().Seconds() - cpu0
	pprof.StopCPUProfile()
	close(errs)
	var errAll error
	for err := range errs {
		errAll = errors.Join(errAll, err)
	}
	if rn.stackPkts != nil {
		res.StackPkts = rn.stackPkts() - stack0
	}
	res.Writes = dev.writeBatches()
	res.HeldWrites, res.HeldMost = dev.heldWrites.Load(), dev.heldMost.Load()
	if rn.lroStats != nil {
		st := rn.lroStats()
		res.LRO = &st
	}
	res.Shares = shares(prof.Bytes())
	if cfg.Profile != "" {
		if err := os.WriteFile(cfg.Profile, prof.Bytes(), 0o644); err != nil {
			errAll = errors.Join(errAll, err)
		}
	}
	return res, errAll
}

// shares splits a CPU profile's samples by their "part" label: netstack
// (the TUN device's Write and everything the receiving stack's goroutines
// do), app (the reader: netstack's Read and SHA-256), and the rest, which
// is wireguard-go (UDP receive, decryption, its queues) and the runtime.
func shares(raw []byte) map[string]float64 {
	p, err := profile.Parse(bytes.NewReader(raw))
	if err != nil || len(p.SampleType) == 0 {
		return nil
	}
	by := map[string]int64{}
	var total int64
	for _, s := range p.Sample {
		v := s.Value[len(s.Value)-1]
		part := "wireguard+runtime"
		if l := s.Label["part"]; len(l) > 0 {
			part = l[0]
		}
		by[part] += v
		total += v
	}
	if total == 0 {
		return nil
	}
	out := map[string]float64{}
	for k, v := range by {
		out[k] = float64(v) / float64(total)
	}
	return out
}

// readResult reads the child's JSON lines.
func readResult(r *bufio.Reader) (childResult, error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return childResult{}, fmt.Errorf("receiver: %w", err)
	}
	var res childResult
	if err := json.Unmarshal(line, &res); err != nil {
		return res, fmt.Errorf("receiver said %q: %w", line, err)
	}
	return res, nil
}
