package fdbased

import (
	"encoding/binary"
	"runtime"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gfdbased "gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// The benchmarks send batches of frames into one end of a SOCK_SEQPACKET
// socketpair, with sendmmsg from buffers built once, and count what the
// endpoint under test delivers from the other end. One iteration is one
// batch of benchFrames frames. Besides ns/op they report frames/s,
// ns/frame and allocs/frame over the whole run, the last frames' drain
// included.
//
//	go test -run '^$' -bench . -benchtime 3s ./fdbased

const benchFrames = 64

// receiver is an endpoint under test.
type receiver struct {
	name string
	// frag attaches the dispatcher as an rxbatch.FragmentDispatcher.
	frag bool
	make func(b *testing.B, fd int) stack.LinkEndpoint
}

var receivers = []receiver{
	{"netlro", false, newBenchNetlro},
	{"netlro-fragments", true, newBenchNetlro},
	{"gvisor-recvmmsg", false, newBenchGVisor(0)},
	{"gvisor-recvmmsg-inline", false, newBenchGVisor(1)},
}

// newBenchNetlro returns this package's endpoint over fd, closed when the
// benchmark ends.
func newBenchNetlro(b *testing.B, fd int) stack.LinkEndpoint {
	return newTestEndpoint(b, &Options{FDs: []int{fd}, MTU: 1500})
}

// newBenchGVisor makes gVisor's fdbased endpoint over fd in recvmmsg
// mode, stopped when the benchmark ends. procs is its
// ProcessorsPerChannel: 0 is its default (one goroutine per CPU that the
// reader hands packets to), 1 delivers on the reading goroutine, as this
// package does.
func newBenchGVisor(procs int) func(b *testing.B, fd int) stack.LinkEndpoint {
	return func(b *testing.B, fd int) stack.LinkEndpoint {
		ep, err := gfdbased.New(&gfdbased.Options{
			FDs:                  []int{fd},
			MTU:                  1500,
			PacketDispatchMode:   gfdbased.RecvMMsg,
			ProcessorsPerChannel: procs,
		})
		require.NoError(b, err)
		b.Cleanup(func() {
			ep.Attach(nil) // stops and waits for its goroutines
			ep.Close()
		})
		return ep
	}
}

// benchRun calls send in b.Loop, each call sending a batch of frames
// holding bytes bytes, waits until done says every frame sent has been
// delivered, and reports rates per frame over the whole run. It returns
// the number of frames sent.
func benchRun(b *testing.B, send func() error, frames, bytes int, wake <-chan struct{}, done func(frames uint64) bool) uint64 {
	b.Helper()
	b.ReportAllocs()
	b.SetBytes(int64(bytes))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	for b.Loop() {
		if err := send(); err != nil {
			b.Fatal(err)
		}
	}
	total := uint64(b.N) * uint64(frames)
	waitUntil(b, "the last frames", wake, func() bool { return done(total) })
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(total)/elapsed.Seconds(), "frames/s")
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(total), "ns/frame")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(total), "allocs/frame")
	return total
}

// BenchmarkReceive compares reading and dispatching frames with this
// endpoint, on both paths, and with gVisor's fdbased in recvmmsg mode,
// for pure ACKs and for full-sized TCP segments.
func BenchmarkReceive(b *testing.B) {
	for _, size := range []struct {
		name    string
		payload int
	}{
		{"ack-40B", 0},
		{"mss-1500B", 1460},
	} {
		frames := testpacket.Segments(testpacket.TCP{Seq: 1}, testpacket.Payload(1, benchFrames*max(size.payload, 1)), max(size.payload, 1))
		if size.payload == 0 {
			for i := range frames {
				frames[i] = testpacket.TCP{Seq: 1}.Bytes()
			}
		}
		for _, r := range receivers {
			b.Run(size.name+"/"+r.name, func(b *testing.B) {
				ours, peer := socketPair(b, unix.SOCK_SEQPACKET)
				ep := r.make(b, ours)
				d := newCountingDispatcher()
				if r.frag {
					ep.Attach(countingFragDispatcher{d})
				} else {
					ep.Attach(d)
				}
				s := newSender(peer, frames)
				benchRun(b, s.send, len(frames), s.bytes, d.done, func(total uint64) bool {
					d.target.Store(total)
					return d.frames.Load() >= total
				})
			})
		}
	}
}

// payloadCounter is a NIC stand-in behind an LRO engine: it counts packets
// and TCP payload bytes.
type payloadCounter struct {
	packets, payload atomic.Uint64
	wake             chan struct{}
}

// DeliverNetworkPacket counts pkt, an IPv4 TCP packet without options.
func (c *payloadCounter) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	c.packets.Add(1)
	c.payload.Add(uint64(pkt.Data().Size() - header.IPv4MinimumSize - header.TCPMinimumSize))
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// DeliverLinkPacket is not called by the engine for these packets.
func (c *payloadCounter) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// streamSender sends one TCP flow's in-order segments, renumbering them
// before each batch so that the stream goes on.
type streamSender struct {
	*sender
	frames [][]byte
	seq    uint32
}

func (s *streamSender) send() error {
	for _, f := range s.frames {
		tcp := header.TCP(f[header.IPv4MinimumSize:])
		binary.BigEndian.PutUint32(tcp[4:], s.seq)
		s.seq += uint32(len(tcp) - header.TCPMinimumSize)
		testpacket.SetTCPChecksum(f, false)
	}
	return s.sender.send()
}

// BenchmarkLRO runs netlro's engine (lroendpoint, default Config) over
// this endpoint, which ends each batch with Flush and hands over views,
// and over gVisor's fdbased, after which the engine flushes on its
// FlushDelay timer. The stream is one TCP flow of full-sized segments.
// merged/packet is the mean number of segments per packet netstack got.
func BenchmarkLRO(b *testing.B) {
	for _, r := range []receiver{receivers[0], receivers[2], receivers[3]} {
		b.Run(r.name, func(b *testing.B) {
			ours, peer := socketPair(b, unix.SOCK_SEQPACKET)
			lep, err := lroendpoint.New(r.make(b, ours), lro.Config{})
			require.NoError(b, err)
			c := &payloadCounter{wake: make(chan struct{}, 1)}
			lep.Attach(c)
			b.Cleanup(func() { lep.Attach(nil) })
			frames := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(2, benchFrames*1460), 1460)
			s := &streamSender{sender: newSender(peer, frames), frames: frames, seq: 1}
			total := benchRun(b, s.send, len(frames), s.bytes, c.wake, func(total uint64) bool {
				return c.payload.Load() >= total*1460
			})
			b.ReportMetric(float64(total)/float64(c.packets.Load()), "merged/packet")
		})
	}
}

// BenchmarkSuperPacketCost weighs what SourceAuto decides for
// Options.VNetHdr: io_uring would save a TCP super-packet's read(2) its
// system call (a read that finds nothing, "syscall"), and would add a
// copy of up to 64 KiB from the ring's buffer into the packet's views
// ("copy64k"), which read(2) puts there directly. For comparison, the
// copy of an MTU-sized frame, which io_uring pays on every frame
// ("copy1514"). Each reports the thread's CPU time per operation
// (cpu-ns/op) besides the wall time, which a loaded machine inflates.
//
//	go test -run '^$' -bench SuperPacketCost -count 5 ./fdbased
func BenchmarkSuperPacketCost(b *testing.B) {
	for _, size := range []int{1514, 65550} {
		name := "copy1514"
		if size > 1514 {
			name = "copy64k"
		}
		b.Run(name, func(b *testing.B) {
			ring := make([]byte, size)
			views := newRxBufs(1, true)
			views.refill(1514+1, header.EthernetMinimumSize)
			defer views.free()
			b.SetBytes(int64(size))
			cpu := startThreadCPU(b)
			for b.Loop() {
				// As a ring's frame would be put: the view, then the spare.
				n := copy(views.views[0].AsSlice(), ring)
				copy(views.spares[0].AsSlice(), ring[n:])
			}
			cpu.report(b)
		})
	}
	b.Run("syscall", func(b *testing.B) {
		var p [2]int
		require.NoError(b, unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC))
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		var buf [1]byte
		cpu := startThreadCPU(b)
		for b.Loop() {
			unix.RawSyscall(unix.SYS_READ, uintptr(p[0]), uintptr(unsafe.Pointer(&buf[0])), 1)
		}
		cpu.report(b)
	})
}

// threadCPU measures the CPU time of the benchmark's thread, to which it
// locks the goroutine until report.
type threadCPU struct{ start time.Duration }

func startThreadCPU(b *testing.B) threadCPU {
	runtime.LockOSThread()
	return threadCPU{start: threadCPUTime(b)}
}

// report reports the thread's CPU time per operation since start.
func (c threadCPU) report(b *testing.B) {
	used := threadCPUTime(b) - c.start
	runtime.UnlockOSThread()
	b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func threadCPUTime(b *testing.B) time.Duration {
	var ts unix.Timespec
	require.NoError(b, unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts))
	return time.Duration(ts.Nano())
}
