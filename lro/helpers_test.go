package lro

import (
	"bytes"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/rxbatch"
)

// delivered is one packet the engine handed up, copied.
type delivered struct {
	proto tcpip.NetworkProtocolNumber
	data  []byte // from the network header on
	link  []byte // the consumed link header
}

// recorder is a stack.NetworkDispatcher that keeps a copy of every packet.
type recorder struct {
	mu sync.Mutex
	// +checklocks:mu
	pkts []delivered
}

func (r *recorder) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d := delivered{proto: proto, data: testpacket.Bytes(pkt), link: bytes.Clone(pkt.LinkHeader().Slice())}
	r.mu.Lock()
	r.pkts = append(r.pkts, d)
	r.mu.Unlock()
}

func (r *recorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

func (r *recorder) take() []delivered {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.pkts
	r.pkts = nil
	return out
}

// discard is a stack.NetworkDispatcher that does nothing, for benchmarks.
type discard struct{}

func (discard) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
func (discard) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}

// path is how packets reach the engine.
type path int

const (
	viaPacket    path = iota // DeliverNetworkPacket
	viaFragments             // DeliverFragments
	viaBytes                 // DeliverBytes, the caller's buffer overwritten after each call
)

// paths lists every way in, for tests that run each.
var paths = []path{viaPacket, viaFragments, viaBytes}

func (p path) String() string {
	switch p {
	case viaPacket:
		return "packet"
	case viaFragments:
		return "fragments"
	}
	return "bytes"
}

// feed hands one raw IP packet to e by path p, as a link endpoint would,
// and releases what it created.
func feed(e target, p path, b []byte) { feedProto(e, p, testpacket.Proto(b), b) }

// target is what the tests feed: an *Engine or one of its *Queues.
type target interface {
	stack.NetworkDispatcher
	rxbatch.FragmentDispatcher
	rxbatch.BytesDispatcher
}

// feedProto is feed with the network protocol given. On the bytes path it
// copies b into a buffer of its own, as a program reading into a reused
// buffer has it, and overwrites that buffer as soon as DeliverBytes
// returns: whatever the engine kept of it would be garbage.
func feedProto(e target, p path, proto tcpip.NetworkProtocolNumber, b []byte) {
	switch p {
	case viaFragments:
		e.DeliverFragments(proto, 0, buffer.MakeWithData(b))
	case viaBytes:
		scratch := scratchPool.Get().(*[]byte)
		own := append((*scratch)[:0], b...)
		e.DeliverBytes(proto, own)
		for i := range own {
			own[i] = 0xa5
		}
		*scratch = own
		scratchPool.Put(scratch)
	default:
		pkt := testpacket.NewPacket(b)
		e.DeliverNetworkPacket(proto, pkt)
		pkt.DecRef()
	}
}

// scratchPool holds the callers' reused buffers of the bytes path.
var scratchPool = sync.Pool{New: func() any { b := make([]byte, 0, 1<<17); return &b }}

func newEngine(t testing.TB, next stack.NetworkDispatcher, cfg Config) *Engine {
	t.Helper()
	if cfg.FlushDelay == 0 {
		cfg.FlushDelay = -1 // tests flush explicitly unless they test the timer
	}
	e, err := New(next, cfg)
	require.NoError(t, err)
	return e
}

// requirePartition checks that out is in under merging: output k carries
// inputs want[k] at a time, in order; a one-segment output is byte for
// byte its input; a merged one has valid checksums, the concatenated
// payload, and the last segment's ACK and window (inet_lro rules).
func requirePartition(t *testing.T, in [][]byte, out []delivered, want []int) {
	t.Helper()
	got := make([]int, 0, len(out))
	i := 0
	for _, d := range out {
		if i >= len(in) {
			got = append(got, -1)
			continue
		}
		n := countSegments(in[i:], d.data)
		got = append(got, n)
		if n == 0 {
			break
		}
		i += n
	}
	require.Equal(t, want, got, "segments per delivered packet")
}

// countSegments returns how many leading packets of in make up d, or 0.
func countSegments(in [][]byte, d []byte) int {
	if bytes.Equal(in[0], d) {
		return 1
	}
	tcp, payload, err := testpacket.Check(d)
	if err != nil {
		return 0
	}
	var want []byte
	for n, seg := range in {
		segTCP, p, err := testpacket.Check(seg)
		if err != nil {
			return 0
		}
		want = append(want, p...)
		if len(want) == len(payload) {
			if !bytes.Equal(want, payload) || segTCP.AckNumber() != tcp.AckNumber() ||
				segTCP.WindowSize() != tcp.WindowSize() || header.TCP(in[0][ipLen(in[0]):]).SequenceNumber() != tcp.SequenceNumber() {
				return 0
			}
			return n + 1
		}
		if len(want) > len(payload) {
			return 0
		}
	}
	return 0
}

func ipLen(b []byte) int {
	if b[0]>>4 == 6 {
		return header.IPv6MinimumSize
	}
	return int(header.IPv4(b).HeaderLength())
}

func bufferOf(b []byte) buffer.Buffer { return buffer.MakeWithData(b) }
