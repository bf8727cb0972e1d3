package lro

import (
	"fmt"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"

	"github.com/netlro/netlro/internal/testpacket"
)

// trace is a receive batch: flows interleaved round robin, each sending
// MSS-sized in-order segments with timestamps, as a bulk TCP sender does.
type trace struct {
	pkts  [][]byte
	bytes int64 // TCP payload bytes
}

func makeTrace(flows, perFlow int, v6 bool) trace {
	var t trace
	streams := make([][][]byte, flows)
	for f := range flows {
		payload := testpacket.Payload(uint64(f), perFlow*1448)
		streams[f] = testpacket.Segments(testpacket.TCP{V6: v6, SrcPort: uint16(1000 + f), TS: true, TSVal: 1}, payload, 1448)
		t.bytes += int64(len(payload))
	}
	for i := range perFlow {
		for f := range flows {
			t.pkts = append(t.pkts, streams[f][i])
		}
	}
	return t
}

// receiver is one way of handing a batch to netstack (here, to discard).
type receiver struct {
	name string
	run  func(tb testing.TB, tr trace) func() // returns one batch's work
}

// newPkt builds a packet the way a link endpoint does: a pooled chunk with
// the frame copied in. Every receiver pays it; "baseline" measures it.
func newPkt(b []byte) *stack.PacketBuffer {
	return stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
}

var receivers = []receiver{
	{"baseline", func(tb testing.TB, tr trace) func() {
		return func() {
			for _, b := range tr.pkts {
				pkt := newPkt(b)
				discard{}.DeliverNetworkPacket(header.IPv4ProtocolNumber, pkt)
				pkt.DecRef()
			}
		}
	}},
	{"baseline-views", func(tb testing.TB, tr trace) func() {
		return func() {
			for _, b := range tr.pkts {
				buf := buffer.MakeWithData(b)
				buf.Release()
			}
		}
	}},
	{"gvisor-gro", func(tb testing.TB, tr trace) func() {
		g := &gro.GRO{Dispatcher: discard{}}
		g.Init(true)
		return func() {
			for _, b := range tr.pkts {
				pkt := newPkt(b)
				pkt.NetworkProtocolNumber = testpacket.Proto(b)
				g.Enqueue(pkt)
				pkt.DecRef()
			}
			// gVisor's Flush delivers only the head of each bucket
			// (see STYLE.md); call it until nothing is left.
			for range 8 {
				g.Flush()
			}
		}
	}},
	{"netlro", func(tb testing.TB, tr trace) func() {
		e := newEngine(tb, discard{}, Config{MaxFlows: 64})
		return func() {
			for _, b := range tr.pkts {
				pkt := newPkt(b)
				e.DeliverNetworkPacket(testpacket.Proto(b), pkt)
				pkt.DecRef()
			}
			e.Flush()
		}
	}},
	{"netlro-pages", func(tb testing.TB, tr trace) func() {
		e := newEngine(tb, discard{}, Config{MaxFlows: 64})
		return func() {
			for _, b := range tr.pkts {
				e.DeliverFragments(testpacket.Proto(b), 0, buffer.MakeWithData(b))
			}
			e.Flush()
		}
	}},
	{"netlro-bytes", func(tb testing.TB, tr trace) func() {
		e := newEngine(tb, discard{}, Config{MaxFlows: 64})
		return func() {
			for _, b := range tr.pkts {
				e.DeliverBytes(testpacket.Proto(b), b)
			}
			e.Flush()
		}
	}},
	{"netlro-offload", func(tb testing.TB, tr trace) func() {
		e := newEngine(tb, discard{}, Config{MaxFlows: 64, ClaimChecksumOffload: true})
		return func() {
			for _, b := range tr.pkts {
				e.DeliverFragments(testpacket.Proto(b), 0, buffer.MakeWithData(b))
			}
			e.Flush()
		}
	}},
}

// BenchmarkEngine runs the same receive batches through gVisor's stack/gro
// and through netlro, side by side. ns/seg includes what a link endpoint
// does per frame: subtract "baseline" (a pooled view and a PacketBuffer
// per frame) from gvisor-gro, netlro and netlro-offload, and
// "baseline-views" (the pooled view alone) from netlro-pages, for the
// receive offload's own cost. netlro-bytes is the caller's bytes handed
// over as they are (DeliverBytes): its figure is the whole cost, the
// copies into pooled views included, to compare with baseline plus
// gvisor-gro's or netlro's.
func BenchmarkEngine(b *testing.B) {
	for _, shape := range []struct {
		name           string
		flows, perFlow int
		v6             bool
	}{
		{"1flow", 1, 64, false},
		{"1flow-v6", 1, 64, true},
		{"8flows", 8, 8, false},
	} {
		tr := makeTrace(shape.flows, shape.perFlow, shape.v6)
		for _, r := range receivers {
			b.Run(fmt.Sprintf("%s/%s", shape.name, r.name), func(b *testing.B) {
				batch := r.run(b, tr)
				b.ReportAllocs()
				b.SetBytes(tr.bytes)
				for b.Loop() {
					batch()
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(tr.pkts)), "ns/seg")
			})
		}
	}
}

// TestZeroAllocs: nothing on the per-packet path allocates in steady
// state, per segment merged, passed through, or flushed.
func TestZeroAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	acks := make([][]byte, 64)
	for i := range acks {
		acks[i] = testpacket.TCP{Ack: uint32(i)}.Bytes()
	}
	for _, tc := range []struct {
		name string
		pkts [][]byte
	}{
		{"merge and flush", makeTrace(1, 40, false).pkts},
		{"merge and flush v6", makeTrace(1, 40, true).pkts},
		{"interleaved flows", makeTrace(8, 5, false).pkts},
		{"pass through", acks},
	} {
		for _, p := range paths {
			t.Run(tc.name+"/"+p.String(), func(t *testing.T) {
				// A timer that is armed but does not fire in the run.
				e := newEngine(t, discard{}, Config{MaxFlows: 16, FlushDelay: time.Hour})
				defer e.Close()
				batch := func() {
					for _, b := range tc.pkts {
						feed(e, p, b)
					}
					e.Flush()
				}
				batch() // warm the pools
				if n := testing.AllocsPerRun(100, batch); n != 0 {
					t.Errorf("%v allocations per batch of %d packets, want 0", n, len(tc.pkts))
				}
			})
		}
	}
}
