package fdbased

import (
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

func TestNewRejects(t *testing.T) {
	seq, _ := socketPair(t, unix.SOCK_SEQPACKET)
	stream, _ := socketPair(t, unix.SOCK_STREAM)
	pipe, _ := newPipe(t)
	closed, _ := socketPair(t, unix.SOCK_SEQPACKET)
	dup, err := unix.Dup(closed)
	require.NoError(t, err)
	require.NoError(t, unix.Close(dup))

	tests := []struct {
		name    string
		opts    *Options
		invalid bool // wraps ErrInvalidOptions
	}{
		{"nil options", nil, true},
		{"no fds", &Options{MTU: 1500}, true},
		{"MTU 0", &Options{FDs: []int{seq}}, true},
		{"negative batch", &Options{FDs: []int{seq}, MTU: 1500, BatchSize: -1}, true},
		{"batch past UIO_MAXIOV", &Options{FDs: []int{seq}, MTU: 1500, BatchSize: maxBatchSize + 1}, true},
		{"short MAC", &Options{FDs: []int{seq}, MTU: 1500, EthernetHeader: true, Address: "\x02\x00"}, true},
		{"stream socket", &Options{FDs: []int{stream}, MTU: 1500}, true},
		{"unknown source", &Options{FDs: []int{seq}, MTU: 1500, Source: numSources}, true},
		{"recvmmsg on a pipe", &Options{FDs: []int{pipe}, MTU: 1500, Source: SourceRecvmmsg}, true},
		{"io_uring on a socket", &Options{FDs: []int{seq}, MTU: 1500, Source: SourceIOUring}, true},
		{"VNetHdr with io_uring", &Options{FDs: []int{pipe}, MTU: 1500, VNetHdr: true, Source: SourceIOUring}, true},
		{"closed fd", &Options{FDs: []int{dup}, MTU: 1500}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			le, err := New(tc.opts)
			require.Error(t, err)
			assert.Nil(t, le)
			if tc.invalid {
				assert.ErrorIs(t, err, ErrInvalidOptions)
			} else {
				assert.NotErrorIs(t, err, ErrInvalidOptions)
			}
		})
	}
}

func TestLinkEndpointMethods(t *testing.T) {
	fd, _ := socketPair(t, unix.SOCK_SEQPACKET)
	tests := []struct {
		name     string
		opts     Options
		hdr      uint16
		arp      header.ARPHardwareType
		caps     stack.LinkEndpointCapabilities
		wantAddr tcpip.LinkAddress
	}{
		{
			name: "IP",
			opts: Options{MTU: 1500},
			arp:  header.ARPHardwareNone,
		},
		{
			name:     "Ethernet with offloads",
			opts:     Options{MTU: 1500, EthernetHeader: true, Address: ourMAC, RXChecksumOffload: true, TXChecksumOffload: true},
			hdr:      header.EthernetMinimumSize,
			arp:      header.ARPHardwareEther,
			caps:     stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload | stack.CapabilityTXChecksumOffload,
			wantAddr: ourMAC,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.FDs = []int{fd}
			e := newTestEndpoint(t, &opts)
			assert.Equal(t, tc.hdr, e.MaxHeaderLength())
			assert.Equal(t, tc.arp, e.ARPHardwareType())
			assert.Equal(t, tc.caps, e.Capabilities())
			assert.Equal(t, tc.wantAddr, e.LinkAddress())
			assert.Equal(t, uint32(1500), e.MTU())
			assert.False(t, e.IsAttached())

			e.SetMTU(9000)
			assert.Equal(t, uint32(9000), e.MTU())
			e.SetLinkAddress(otherMAC)
			assert.Equal(t, otherMAC, e.LinkAddress())

			// AddHeader then ParseHeader gives back the packet.
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
				ReserveHeaderBytes: int(e.MaxHeaderLength()),
				Payload:            buffer.MakeWithData(makeFrame(60, false, "", 1)),
			})
			defer pkt.DecRef()
			pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
			pkt.EgressRoute.LocalLinkAddress = ourMAC
			pkt.EgressRoute.RemoteLinkAddress = peerMAC
			e.AddHeader(pkt)
			require.Len(t, pkt.LinkHeader().Slice(), int(tc.hdr))
			in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: pkt.ToBuffer()})
			defer in.DecRef()
			require.True(t, e.ParseHeader(in))
			assert.Equal(t, int(tc.hdr), len(in.LinkHeader().Slice()))
			if tc.hdr > 0 {
				eth := header.Ethernet(in.LinkHeader().Slice())
				assert.Equal(t, peerMAC, eth.DestinationAddress())
				assert.Equal(t, ourMAC, eth.SourceAddress())
				assert.Equal(t, header.IPv4ProtocolNumber, in.NetworkProtocolNumber)
			}
			assert.Equal(t, makeFrame(60, false, "", 1), in.Data().AsRange().ToSlice())
		})
	}
}

func TestParseHeaderShort(t *testing.T) {
	fd, _ := socketPair(t, unix.SOCK_SEQPACKET)
	e := newTestEndpoint(t, &Options{FDs: []int{fd}, MTU: 1500, EthernetHeader: true})
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, header.EthernetMinimumSize-1))})
	defer pkt.DecRef()
	assert.False(t, e.ParseHeader(pkt))
}

func TestAttachDetachRestart(t *testing.T) {
	fd0, peer0 := socketPair(t, unix.SOCK_SEQPACKET)
	fd1, peer1 := socketPair(t, unix.SOCK_SEQPACKET)
	base := runtime.NumGoroutine()
	e := newTestEndpoint(t, &Options{FDs: []int{fd0, fd1}, MTU: 1500})
	r1, r2, r3 := newRecorder(), newRecorder(), newRecorder()

	// Every frame here is delivered: wait for the n-th, to whichever
	// recorder.
	waitDelivered := func(r *recorder, n uint64) {
		t.Helper()
		waitUntil(t, "frames to be delivered", r.notify, func() bool { return e.Stats().Delivered() >= n })
	}
	e.Attach(fragDispatcher{r1})
	require.True(t, e.IsAttached())
	writeFrame(t, peer0, makeFrame(100, false, "", 1))
	writeFrame(t, peer1, makeFrame(100, false, "", 2))
	waitDelivered(r1, 2)
	assert.Len(t, r1.frames(), 2)

	e.Attach(nil)
	assert.False(t, e.IsAttached())
	waitGoroutines(t, base)
	e.Wait() // returns at once: nothing runs

	// Frames sent while detached wait in the socket for the next Attach.
	writeFrame(t, peer0, makeFrame(100, false, "", 3))
	e.Attach(plainDispatcher{r2})
	waitDelivered(r2, 3)
	require.Len(t, r2.frames(), 1)
	assert.Equal(t, makeFrame(100, false, "", 3), r2.frames()[0].data)

	// Attaching while running replaces the dispatcher.
	e.Attach(fragDispatcher{r3})
	writeFrame(t, peer1, makeFrame(100, false, "", 4))
	waitDelivered(r3, 4)
	require.Len(t, r3.frames(), 1)
	assert.Equal(t, makeFrame(100, false, "", 4), r3.frames()[0].data)
	assert.Len(t, r1.frames(), 2)
	assert.Len(t, r2.frames(), 1)

	e.Close()
	e.Wait()
	waitGoroutines(t, base)
	e.Attach(plainDispatcher{r2}) // after Close: nothing
	assert.False(t, e.IsAttached())
	assert.LessOrEqual(t, runtime.NumGoroutine(), base)
	e.Close() // twice is fine
}

func TestCloseRunsOnCloseAction(t *testing.T) {
	fd, _ := socketPair(t, unix.SOCK_SEQPACKET)
	base := runtime.NumGoroutine()
	e := newTestEndpoint(t, &Options{FDs: []int{fd}, MTU: 1500})
	calls := 0
	e.SetOnCloseAction(func() { calls++ })
	e.Attach(plainDispatcher{newRecorder()})
	e.Close()
	e.Close()
	e.Wait()
	assert.Equal(t, 1, calls)
	waitGoroutines(t, base)
}

func TestClosedFunc(t *testing.T) {
	seqpacket := func(t *testing.T) (int, int) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		require.NoError(t, err)
		return fds[0], fds[1]
	}
	pipe := func(t *testing.T) (int, int) {
		var p [2]int
		require.NoError(t, unix.Pipe2(p[:], unix.O_CLOEXEC))
		return p[0], p[1]
	}
	tests := []struct {
		name   string
		pair   func(t *testing.T) (ours, peer int)
		source Source
	}{
		{"seqpacket peer closes", seqpacket, SourceAuto},
		{"seqpacket peer closes, read(2)", seqpacket, SourceRead},
		{"pipe writer closes", pipe, SourceAuto},
		{"pipe writer closes, read(2)", pipe, SourceRead},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := tc.pair(t)
			defer unix.Close(ours)
			base := runtime.NumGoroutine()
			closed := make(chan tcpip.Error, 1)
			e := newTestEndpoint(t, &Options{FDs: []int{ours}, MTU: 1500, Source: tc.source, ClosedFunc: func(err tcpip.Error) { closed <- err }})
			r := newRecorder()
			e.Attach(fragDispatcher{r})
			const frames = 5
			for i := range frames {
				writeFrame(t, peer, makeFrame(200, false, "", i))
				// A pipe keeps no boundaries: one frame at a time.
				waitFrames(t, e, r, uint64(i+1))
			}
			require.NoError(t, unix.Close(peer))
			waitUntil(t, "ClosedFunc", nil, func() bool { return len(closed) == 1 })
			assert.IsType(t, &tcpip.ErrClosedForReceive{}, <-closed)
			waitGoroutines(t, base) // the loop ended on its own: Wait returns
			e.Wait()
			got := r.frames()
			require.Len(t, got, frames)
			for i, ev := range got {
				assert.Equal(t, makeFrame(200, false, "", i), ev.data)
			}
			s := e.Stats()
			assert.Equal(t, uint64(frames), s.Frames)
			assert.Zero(t, s.DroppedRunt, "end of file is not a runt")
			assert.True(t, e.IsAttached(), "the dispatcher stays until Attach(nil)")
		})
	}
}

// TestNoFDLeak: an endpoint attached, detached and closed, again and
// again, leaves no file descriptor of its own open (its eventfd, an
// io_uring's ring).
func TestNoFDLeak(t *testing.T) {
	count := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		return len(ents)
	}
	ours, _ := socketPair(t, unix.SOCK_SEQPACKET)
	pipe, _ := newPipe(t)
	before := count()
	for i := range 50 {
		opts := &Options{FDs: []int{ours}, MTU: 1500}
		if i%2 == 1 {
			opts.FDs = []int{pipe} // io_uring, where the kernel allows it
		}
		le, err := New(opts)
		require.NoError(t, err)
		le.Attach(newRecorder())
		le.Attach(nil)
		le.Attach(newRecorder())
		le.Close()
		le.Wait()
	}
	assert.Equal(t, before, count())
}

// blockingDispatcher's deliveries wait until release is closed, as a
// delivery waits for netstack's lock while Stack.Destroy holds it.
type blockingDispatcher struct {
	inside  chan struct{}
	release chan struct{}
}

func (b *blockingDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	b.inside <- struct{}{}
	<-b.release
}

func (b *blockingDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// TestDetachNeverWaitsForNetstack: while a batch is stuck in netstack,
// Attach(nil) and Wait, which netstack calls holding the lock the batch
// waits for, return at once; Close waits for the dispatch goroutine.
func TestDetachNeverWaitsForNetstack(t *testing.T) {
	ours, peer := socketPair(t, unix.SOCK_SEQPACKET)
	le, err := New(&Options{FDs: []int{ours}, MTU: 1500})
	require.NoError(t, err)
	b := &blockingDispatcher{inside: make(chan struct{}, 4), release: make(chan struct{})}
	le.Attach(b)
	writeFrame(t, peer, makeFrame(100, false, "", 1))
	<-b.inside

	returned := make(chan string)
	go func() {
		le.Attach(nil)
		returned <- "Attach(nil)"
		le.Wait()
		returned <- "Wait"
	}()
	for _, want := range []string{"Attach(nil)", "Wait"} {
		select {
		case got := <-returned:
			assert.Equal(t, want, got)
		case <-time.After(waitLimit):
			t.Fatalf("%s waited for the batch inside netstack", want)
		}
	}
	assert.False(t, le.IsAttached())
	before := runtime.NumGoroutine()
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		le.Close()
	}()
	close(b.release)
	select {
	case <-closed:
	case <-time.After(waitLimit):
		t.Fatal("Close did not return once the batch was out")
	}
	waitGoroutines(t, before-1) // the dispatch goroutine is gone
}
