package lro

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"

	"github.com/netlro/netlro/internal/csum"
	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/rxbatch"
)

// BenchmarkFlowFlood sends one segment each from a million distinct flows,
// as a scan or a flood would: every packet starts a session and evicts
// one. Heap growth is reported in bytes (heap-delta-B, from
// runtime.MemStats before and after) and must stay flat; compare ns/pkt
// with BenchmarkFlowFlood/one-flow, the same count of segments of one flow.
func BenchmarkFlowFlood(b *testing.B) {
	const flows = 1_000_000
	// One template, ports and an address byte rewritten per packet, so
	// the benchmark holds one packet in memory, not a million.
	tmpl := testpacket.TCP{TS: true, Payload: testpacket.Payload(1, 1448)}
	for _, mode := range []string{"distinct-flows", "one-flow"} {
		b.Run(mode, func(b *testing.B) {
			e := newEngine(b, discard{}, Config{})
			pkt := tmpl.Bytes()
			segs := testpacket.Segments(tmpl, testpacket.Payload(2, 64*1448), 1448)
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ReportAllocs()
			b.SetBytes(int64(flows * 1448))
			for b.Loop() {
				for i := range flows {
					if mode == "one-flow" {
						e.DeliverFragments(testpacket.Proto(segs[i%64]), 0, buffer.MakeWithData(segs[i%64]))
						if i%64 == 63 {
							e.Flush()
						}
						continue
					}
					p := flowPacket(pkt, i)
					e.DeliverFragments(testpacket.Proto(p), 0, buffer.MakeWithData(p))
				}
				e.Flush()
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			// Every packet must have been a valid segment, each of the
			// flood a session of its own, or this measured pass-through.
			st := e.Stats()
			if st.PassBadChecksum != 0 || st.PassMalformed != 0 || (mode == "distinct-flows" && st.PacketsOut != st.PacketsIn) {
				b.Fatalf("%s: not a run of valid segments: %v", mode, st)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*flows), "ns/pkt")
			b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)), "heap-delta-B")
		})
	}
}

// flowPacket rewrites pkt's source port and the low bytes of its source
// address for flow i, fixing both checksums incrementally as a router
// would (RFC 1624), so that making the packet costs next to nothing
// beside the engine: recomputing the TCP checksum over the payload would
// add a cost per packet that the one-flow row does not pay.
func flowPacket(pkt []byte, i int) []byte {
	ipSum, tcpSum := binary.BigEndian.Uint16(pkt[10:]), binary.BigEndian.Uint16(pkt[36:])
	for _, w := range []struct {
		off int
		v   uint16
	}{{14, uint16(i >> 8)}, {20, uint16(i)}} { // address low bytes, source port
		old := binary.BigEndian.Uint16(pkt[w.off:])
		binary.BigEndian.PutUint16(pkt[w.off:], w.v)
		if w.off < 20 { // the address is in the IPv4 header too
			ipSum = rfc1624(ipSum, old, w.v)
		}
		tcpSum = rfc1624(tcpSum, old, w.v)
	}
	binary.BigEndian.PutUint16(pkt[10:], ipSum)
	binary.BigEndian.PutUint16(pkt[36:], tcpSum)
	return pkt
}

// rfc1624 updates the checksum hc of data in which one 16-bit word changed
// from m to m' (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
func rfc1624(hc, m, m2 uint16) uint16 {
	return ^checksum.Combine(checksum.Combine(^hc, ^m), m2)
}

// BenchmarkParallelDeliverers runs 1 and 2 goroutines, each delivering its
// own flows' segments in batches and calling Flush at every batch end, as
// a multi-queue lower endpoint does: through one engine ("shared": the
// flows hash across its shards, and every Flush touches them all) or
// through one Queue per goroutine ("queues", the per-NAPI GRO lists of
// Linux). Compare segs/s between rows. "baseline" takes each frame's
// pooled view and releases it at once; "baseline-held" keeps a batch's
// views and releases them at its end, as merging does: that alone shows
// how far gVisor's buffer pool lets this memory pattern scale. "private"
// copies each frame into a slot of the worker's own and checksums it, with
// no pool, no engine, nothing shared: how far the machine itself lets
// per-frame work scale.
//
// On a shared host the rows of one run drift apart: run one row per
// process, -bench='BenchmarkParallelDeliverers/queues/goroutines=2$' say,
// and alternate the rows compared.
func BenchmarkParallelDeliverers(b *testing.B) {
	const batches = 200
	for _, tc := range []struct {
		mode    string // baseline: pooled buffers only, no engine
		workers int
	}{{"private", 1}, {"private", 2},
		{"baseline", 1}, {"baseline", 2}, {"baseline-held", 1}, {"baseline-held", 2},
		{"shared", 1}, {"shared", 2}, {"queues", 1}, {"queues", 2}} {
		mode := tc.mode
		workers := tc.workers
		b.Run(fmt.Sprintf("%s/goroutines=%d", mode, workers), func(b *testing.B) {
			e := newEngine(b, discard{}, Config{MaxFlows: 64})
			traces := make([]trace, workers)
			for w := range traces {
				tr := makeTrace(4, 16, false)
				for i, p := range tr.pkts {
					// Distinct ports per worker: distinct flows.
					q := append([]byte(nil), p...)
					q[20] = byte(w + 1)
					testpacket.SetTCPChecksum(q, false)
					tr.pkts[i] = q
				}
				traces[w] = tr
			}
			b.ReportAllocs()
			b.ResetTimer()
			// Long-lived goroutines, as a lower endpoint's dispatch
			// goroutines are: one started per iteration lands on either
			// P, which mixes the per-P buffer pools between the cores.
			var wg sync.WaitGroup
			for w := range workers {
				var q interface {
					rxbatch.FragmentDispatcher
					rxbatch.Flusher
				} = e
				if mode == "queues" {
					q = e.queue(w)
				}
				wg.Go(func() {
					held := make([]buffer.Buffer, len(traces[w].pkts))
					if mode == "private" {
						slots := make([][2048]byte, len(traces[w].pkts))
						var sum uint16
						for range b.N * batches {
							for i, p := range traces[w].pkts {
								sum = csum.Checksum(slots[i][:copy(slots[i][:], p)], sum)
							}
						}
						privateSum.Store(uint32(sum)) // keep the work
						return
					}
					for range b.N * batches {
						for i, p := range traces[w].pkts {
							buf := buffer.MakeWithData(p)
							switch mode {
							case "baseline":
								buf.Release()
							case "baseline-held":
								held[i] = buf
							default:
								q.DeliverFragments(testpacket.Proto(p), 0, buf)
							}
						}
						switch mode {
						case "baseline":
						case "baseline-held":
							for i := range held {
								held[i].Release()
							}
						default:
							q.Flush()
						}
					}
				})
			}
			wg.Wait()
			b.StopTimer()
			segs := float64(b.N * workers * batches * len(traces[0].pkts))
			b.ReportMetric(segs/b.Elapsed().Seconds(), "segs/s")
		})
	}
}

// privateSum keeps the "private" rows' checksums from being optimised away.
var privateSum atomic.Uint32
