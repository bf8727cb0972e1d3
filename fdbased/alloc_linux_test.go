package fdbased

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// countingDispatcher counts frames and says when a target is reached,
// allocating nothing, so that what allocation tests and benchmarks see is
// the endpoint's.
type countingDispatcher struct {
	frames  atomic.Uint64
	batches atomic.Uint64
	target  atomic.Uint64
	done    chan struct{}
}

func newCountingDispatcher() *countingDispatcher {
	return &countingDispatcher{done: make(chan struct{}, 1)}
}

func (d *countingDispatcher) got() {
	if d.frames.Add(1) == d.target.Load() {
		select {
		case d.done <- struct{}{}:
		default:
		}
	}
}

// DeliverNetworkPacket counts pkt; the caller keeps its reference.
func (d *countingDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	d.got()
}

// DeliverLinkPacket is never called by the endpoints under test.
func (d *countingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// countingFragDispatcher takes views and ends batches, as lro.Engine does.
type countingFragDispatcher struct{ *countingDispatcher }

func (d countingFragDispatcher) DeliverFragments(_ tcpip.NetworkProtocolNumber, _ int, buf buffer.Buffer) {
	buf.Release()
	d.got()
}

func (d countingFragDispatcher) Flush() { d.batches.Add(1) }

// sender writes a fixed batch of frames to a socket with one sendmmsg,
// from message headers built once, so that sending allocates nothing.
type sender struct {
	fd    int
	msgs  []rawfile.MMsgHdr
	iovs  []unix.Iovec
	bytes int
}

func newSender(fd int, frames [][]byte) *sender {
	s := &sender{fd: fd, msgs: make([]rawfile.MMsgHdr, len(frames)), iovs: make([]unix.Iovec, len(frames))}
	for k, f := range frames {
		s.iovs[k] = rawfile.IovecFromBytes(f)
		s.msgs[k].Msg.Iov = &s.iovs[k]
		s.msgs[k].Msg.SetIovlen(1)
		s.bytes += len(f)
	}
	return s
}

// send writes every frame, blocking while the socket is full.
func (s *sender) send() error {
	for done := 0; done < len(s.msgs); {
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd),
			uintptr(unsafe.Pointer(&s.msgs[done])), uintptr(len(s.msgs)-done), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		done += int(n)
	}
	return nil
}

// allocsPerDelivery returns, as testing.AllocsPerRun does over 200 runs,
// the allocations of one send that delivers frames more frames to d,
// waiting each time until d has them. A delivery that does not come
// within waitLimit fails the test.
func allocsPerDelivery(t *testing.T, d *countingDispatcher, frames uint64, send func() error) float64 {
	t.Helper()
	guard := time.NewTimer(waitLimit)
	defer guard.Stop()
	timedOut := false
	allocs := testing.AllocsPerRun(200, func() {
		if timedOut {
			return
		}
		d.target.Add(frames)
		if err := send(); err != nil {
			panic(err)
		}
		guard.Reset(waitLimit)
		select {
		case <-d.done:
		case <-guard.C:
			timedOut = true
		}
	})
	require.False(t, timedOut, "frames not delivered within %v", waitLimit)
	return allocs
}

// TestSteadyStateAllocs checks that reading and dispatching a batch
// allocates nothing once the pools are warm, on both paths.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, so pooled views allocate")
	}
	const frames = 32
	for _, tc := range []struct {
		name       string
		frag, vnet bool
	}{{"plain", false, false}, {"fragments", true, false}, {"plain/vnet", false, true}, {"fragments/vnet", true, true}} {
		frag := tc.frag
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
			e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, VNetHdr: tc.vnet})
			d := newCountingDispatcher()
			if frag {
				e.Attach(countingFragDispatcher{d})
			} else {
				e.Attach(d)
			}
			batch := make([][]byte, frames)
			for i := range batch {
				batch[i] = makeFrame(1500, false, "", i)
				if tc.vnet {
					batch[i] = append(append([]byte(nil), vnetZero[:]...), batch[i]...)
				}
			}
			s := newSender(peer, batch)
			allocs := allocsPerDelivery(t, d, frames, s.send)
			require.Zero(t, allocs, "allocations per batch of %d frames", frames)
			waitUntil(t, "the last batch to be counted", nil, func() bool { return e.Stats().Delivered() == d.target.Load() })
		})
	}
}

// TestWriteAllocs checks that WritePackets allocates nothing once its
// message headers have grown to the batch.
func TestWriteAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, so allocation counts mean nothing")
	}
	for _, vnet := range []bool{false, true} {
		t.Run(fmt.Sprintf("vnet=%t", vnet), func(t *testing.T) { testWriteAllocs(t, vnet) })
	}
}

func testWriteAllocs(t *testing.T, vnet bool) {
	const packets = 16
	ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
	e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, EthernetHeader: true, Address: ourMAC, VNetHdr: vnet})
	var pkts []*stack.PacketBuffer
	for i := range packets {
		pkt, _ := outbound(e, 1000, 3, i)
		pkts = append(pkts, pkt)
	}
	defer func() {
		for _, pkt := range pkts {
			pkt.DecRef()
		}
	}()
	// The lists are netstack's to build; build them all beforehand, one
	// per run and one for AllocsPerRun's warm-up.
	const runs = 100
	lists := make([]stack.PacketBufferList, runs+1)
	for i := range lists {
		for _, pkt := range pkts {
			lists[i].PushBack(pkt)
		}
	}
	drain := make([]byte, 2000)
	failed := false
	run := 0
	allocs := testing.AllocsPerRun(runs, func() {
		list := lists[run]
		run++
		if n, err := e.WritePackets(list); n != packets || err != nil {
			failed = true
		}
		for range packets {
			if _, err := unix.Read(peer, drain); err != nil {
				failed = true
			}
		}
	})
	require.False(t, failed, "WritePackets or the peer's read failed")
	require.Zero(t, allocs, "allocations per WritePackets of %d packets", packets)
}

// TestNonSocketAllocs checks that reading and dispatching frames from a
// non-socket allocates nothing once the pools are warm, with read(2) and
// with io_uring (the default for a TAP or TUN device where the kernel
// allows it). The fd is a pipe, written one frame at a time, so that each
// read returns one frame.
func TestNonSocketAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, so pooled views allocate")
	}
	for _, src := range []Source{SourceRead, SourceIOUring} {
		t.Run(src.String(), func(t *testing.T) {
			if src == SourceIOUring {
				if err := probeURing(); err != nil {
					t.Skipf("skipping: io_uring unavailable here: %v", err)
				}
			}
			ours, peer := newPipe(t)
			e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, Source: src})
			d := newCountingDispatcher()
			e.Attach(countingFragDispatcher{d})
			frame := makeFrame(1500, false, "", 1)
			write := func() error {
				_, err := unix.Write(peer, frame)
				return err
			}
			allocs := allocsPerDelivery(t, d, 1, write)
			require.Zero(t, allocs, "allocations per frame")
			require.Equal(t, src, e.Sources()[0].Source)
			if src == SourceIOUring {
				waitUntil(t, "the last batch to be counted as a ring batch", nil, func() bool {
					st := e.Stats()
					return st.RingBatches == st.Batches && st.Batches > 0
				})
			}
		})
	}
}
