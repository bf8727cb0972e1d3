package iperf

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/link/qdisc/fifo"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/internal/bench/cputime"
	"github.com/netlro/netlro/lro"
)

// DefaultMTU is the link MTU when Config.MTU is 0.
const DefaultMTU = 1500

// socketBuffer is the send and receive buffer asked for on each end of a
// socketpair: room for some hundreds of frames, like a NIC's ring. A full
// socket drops what gVisor's fdbased writes, as a full ring would.
const socketBuffer = 1 << 20

// Config describes one transfer.
type Config struct {
	// Mode is the receiver's link endpoint.
	Mode Mode `json:"mode"`
	// IPv6 makes the transfer use IPv6 instead of IPv4.
	IPv6 bool `json:"ipv6"`
	// MTU is the link MTU; 0 means DefaultMTU.
	MTU uint32 `json:"mtu"`
	// Send says how much the sender sends, on how many streams.
	Send SendOptions `json:"send"`
	// Profile impairs the link from the sender; its Streams, if set,
	// overrides Send.Streams.
	Profile Profile `json:"profile"`
	// Pcap, if not nil, receives a pcap capture of every packet the
	// receiver's netstack receives, after netlro merged them.
	Pcap io.Writer `json:"-"`
	// Progress, if not nil, is called a few times a second with the bytes
	// received so far.
	Progress func(received int64) `json:"-"`
}

// normalized returns c with defaults filled in.
func (c Config) normalized() Config {
	if c.MTU == 0 {
		c.MTU = DefaultMTU
	}
	if c.Profile.Streams > 0 {
		c.Send.Streams = c.Profile.Streams
	}
	if c.Send.Streams == 0 {
		c.Send.Streams = 1
	}
	return c
}

// Addrs returns the sender's and the receiver's address for c.
func (c Config) Addrs() (sender, receiver tcpip.Address) {
	if c.IPv6 {
		return SenderAddr6, ReceiverAddr6
	}
	return SenderAddr4, ReceiverAddr4
}

// Result is the outcome of one transfer, measured at the receiver.
type Result struct {
	Mode    Mode   `json:"mode"`              // the receiver's link endpoint
	Profile string `json:"profile,omitempty"` // the link impairment, if any
	Streams int    `json:"streams"`           // TCP connections
	Bytes   int64  `json:"bytes"`             // bytes received over all streams
	// Seconds is the time from the first accept to the last end of
	// stream.
	Seconds float64 `json:"seconds"`
	// CPUSeconds is the user plus system CPU time of the receiving
	// process during the transfer (getrusage RUSAGE_SELF): the receiver
	// alone when the sender runs in another process, both otherwise.
	CPUSeconds float64 `json:"cpu_seconds"`
	// PacketsIn is the number of IP packets the receiver's netstack
	// received (its IP.PacketsReceived), merged packets counting one.
	PacketsIn uint64 `json:"packets_in"`
	// Verified reports whether every stream arrived with the sender's
	// length and SHA-256.
	Verified bool           `json:"verified"`
	Sent     SendResult     `json:"sent"`              // what the sender reported
	Received []StreamResult `json:"received"`          // what the receiver read, per stream
	LRO      *lro.Stats     `json:"lro,omitempty"`     // the engine's counters, for netlro modes
	FD       *fdbased.Stats `json:"fdbased,omitempty"` // the reader's counters, for this project's fdbased
	// Sources says how this project's fdbased read its fd, and why.
	Sources []fdbased.SourceChoice `json:"sources,omitempty"`
}

// Gbps returns the goodput in Gbit/s.
func (r Result) Gbps() float64 {
	if r.Seconds == 0 {
		return 0
	}
	return float64(r.Bytes) * 8 / r.Seconds / 1e9
}

// CPUPerGB returns receiver CPU seconds per GB (10^9 bytes) received.
func (r Result) CPUPerGB() float64 {
	if r.Bytes == 0 {
		return 0
	}
	return r.CPUSeconds / (float64(r.Bytes) / 1e9)
}

// SenderCPUPerGB returns the sending process's CPU seconds per GB
// received, or 0 when the sender did not run in a process of its own.
// Where sender and receiver share the machine's cores, the two figures
// together bound the bitrate: with n cores, at most n*8/(sender+receiver)
// Gbit/s.
func (r Result) SenderCPUPerGB() float64 {
	if r.Bytes == 0 {
		return 0
	}
	return r.Sent.CPUSeconds / (float64(r.Bytes) / 1e9)
}

// PacketsPerGB returns packets into netstack per GB received.
func (r Result) PacketsPerGB() float64 {
	if r.Bytes == 0 {
		return 0
	}
	return float64(r.PacketsIn) / (float64(r.Bytes) / 1e9)
}

// SendFunc runs the sending side of a transfer until every stream is sent
// and acknowledged by the receiver closing it.
type SendFunc func(ctx context.Context) (SendResult, error)

// RunReceiver runs the receiving side of one transfer on the link link
// describes, with cfg.Mode's endpoint, while send runs the sending side. It
// returns when both are done; if either fails, the other is cancelled.
func RunReceiver(ctx context.Context, cfg Config, link LinkOptions, send SendFunc) (Result, error) {
	cfg = cfg.normalized()
	link.MTU = cfg.MTU
	_, local := cfg.Addrs()
	rs, err := NewReceiverStack(cfg.Mode, link, cfg.Pcap, local)
	if err != nil {
		return Result{}, err
	}
	destroy := sync.OnceFunc(rs.Destroy)
	defer destroy()
	s := rs.Stack
	rcv, err := Listen(s, local, Port, cfg.Profile.MSS)
	if err != nil {
		return Result{}, err
	}
	defer rcv.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if cfg.Progress != nil {
		stop := progress(ctx, rcv, cfg.Progress)
		defer stop()
	}
	cpu0 := cputime.Total()
	pkts0 := s.Stats().IP.PacketsReceived.Value()

	var (
		sent    SendResult
		sendErr error
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		sent, sendErr = send(ctx)
		if sendErr != nil {
			cancel()
		}
	})
	got, recvErr := rcv.Receive(ctx, cfg.Send.Streams)
	if recvErr != nil {
		cancel()
	}
	wg.Wait()
	cpu := cputime.Total() - cpu0
	pkts := s.Stats().IP.PacketsReceived.Value() - pkts0
	if sendErr != nil {
		return Result{}, fmt.Errorf("iperf: %s: send: %w", cfg.Mode, sendErr)
	}
	if recvErr != nil {
		return Result{}, fmt.Errorf("iperf: %s: receive: %w", cfg.Mode, recvErr)
	}
	// Destroy the stack before reading the counters, so packets the
	// engine still held are counted as delivered.
	destroy()
	res := Result{
		Mode:       cfg.Mode,
		Profile:    cfg.Profile.Name,
		Streams:    cfg.Send.Streams,
		Seconds:    got.End.Sub(got.Start).Seconds(),
		CPUSeconds: cpu.Seconds(),
		PacketsIn:  pkts,
		Verified:   Verify(sent, got.Streams),
		Sent:       sent,
		Received:   got.Streams,
	}
	for _, st := range got.Streams {
		res.Bytes += st.Bytes
	}
	if st, ok := rs.Link.LROStats(); ok {
		res.LRO = &st
	}
	if st, ok := rs.Link.FDStats(); ok {
		res.FD = &st
	}
	res.Sources = rs.Link.Sources()
	return res, nil
}

// Run runs one transfer in this process: two netstacks joined by a unix
// SOCK_SEQPACKET socketpair, the sender on gVisor's fdbased, the receiver
// on cfg.Mode's endpoint, through an impairing Pump when cfg.Profile
// impairs. Its CPUSeconds count both stacks.
func Run(ctx context.Context, cfg Config) (Result, error) {
	fds, err := Socketpair()
	if err != nil {
		return Result{}, err
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	return RunReceiver(ctx, cfg, LinkOptions{FD: fds[1]}, func(ctx context.Context) (SendResult, error) {
		res, err := SendOverFD(ctx, cfg, fds[0])
		res.CPUSeconds = 0 // both stacks', not the sender's
		return res, err
	})
}

// SendOverFD runs the sending side of a transfer described by cfg on fd,
// one end of a SOCK_SEQPACKET socketpair whose other end the receiver
// reads: a netstack on gVisor's fdbased (GSO off) that dials the receiver.
// When cfg.Profile impairs, the netstack sits behind a Pump of its own,
// whose counters the result carries.
func SendOverFD(ctx context.Context, cfg Config, fd int) (SendResult, error) {
	cfg = cfg.normalized()
	if !cfg.Profile.Impairs() {
		return sendNetstack(ctx, cfg, fd)
	}
	inner, err := Socketpair()
	if err != nil {
		return SendResult{}, err
	}
	defer unix.Close(inner[0])
	defer unix.Close(inner[1])
	pump, err := NewPump(inner[1], fd, cfg.Profile, cfg.Send.Seed)
	if err != nil {
		return SendResult{}, err
	}
	defer pump.Close()
	res, err := sendNetstack(ctx, cfg, inner[0])
	st := pump.Stats()
	res.Pump = &st
	return res, err
}

// sendNetstack builds the sender's netstack on fd and sends. The NIC has a
// FIFO queueing discipline, as gVisor's runsc gives fdbased NICs, so that
// segments leave in sendmmsg batches rather than one syscall each. Its
// queue holds more than TCP can have in flight: the link pushes back when
// the socketpair is full (backpressure), and the queue must then hold what
// TCP sends meanwhile rather than drop it, which a tail of a flight does
// not survive in gVisor's TCP (see backpressure).
func sendNetstack(ctx context.Context, cfg Config, fd int) (SendResult, error) {
	ep, err := NewSenderLink(fd, cfg.MTU)
	if err != nil {
		return SendResult{}, err
	}
	local, remote := cfg.Addrs()
	s, err := newStack(ep, stack.NICOptions{QDisc: fifo.New(ep, 1, senderQueue)}, local)
	if err != nil {
		return SendResult{}, err
	}
	defer DestroyStack(s, ep)
	raddr := tcpip.FullAddress{NIC: nicID, Addr: remote, Port: Port}
	dial := func(ctx context.Context) (net.Conn, error) {
		return gonet.DialContextTCP(ctx, s, raddr, proto(remote))
	}
	res, err := Send(ctx, dial, cfg.Send, nil)
	res.TCP = senderTCPStats(s)
	return res, err
}

// senderQueue is the sender's qdisc queue, in packets: more than gVisor's
// TCP has in flight with its largest receive window (8 MiB of MTU-sized
// segments).
const senderQueue = 8 << 20 / 1400

// senderTCPStats reads what the sender's stack counted.
func senderTCPStats(s *stack.Stack) *SenderTCPStats {
	st := s.Stats()
	return &SenderTCPStats{
		Retransmits:        st.TCP.Retransmits.Value(),
		Timeouts:           st.TCP.Timeouts.Value(),
		SACKRecoveries:     st.TCP.SACKRecovery.Value(),
		LinkDropsQueueFull: st.NICs.TxPacketsDroppedNoBufferSpace.Value(),
	}
}

// Socketpair returns a connected pair of unix SOCK_SEQPACKET sockets with
// large buffers, the link between two netstacks.
func Socketpair() ([2]int, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return [2]int{}, fmt.Errorf("iperf: socketpair: %w", err)
	}
	for _, fd := range fds {
		for _, opt := range []int{unix.SO_SNDBUF, unix.SO_RCVBUF} {
			// The kernel caps this at net.core.wmem_max / rmem_max
			// without CAP_NET_ADMIN; what it grants is good enough.
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, opt, socketBuffer)
		}
	}
	return [2]int{fds[0], fds[1]}, nil
}

// progress calls fn with the bytes received a few times a second until
// the returned stop is called or ctx ends.
func progress(ctx context.Context, r *Receiver, fn func(int64)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				fn(r.Received())
			}
		}
	}()
	return func() { cancel(); <-done }
}
