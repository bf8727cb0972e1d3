package framed

import (
	"encoding/binary"
	"errors"
	"io"
	"strconv"
	"sync"
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

// waitLimit is a hang guard: no test waits this long unless it is broken.
const waitLimit = 10 * time.Second

func TestNewReaderConfig(t *testing.T) {
	d := &recorder{}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no format", Config{}},
		{"unknown format", Config{Format: Datagram + 1}},
		{"negative MaxFrame", Config{Format: Qemu, MaxFrame: -1}},
		{"MaxFrame above a chunk", Config{Format: Qemu, MaxFrame: chunkSize + 1}},
		{"negative Batch", Config{Format: Datagram, Batch: -1}},
		{"datagrams from a non-socket", Config{Format: Datagram}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewReader(&pieces{}, tc.cfg, d)
			require.ErrorIs(t, err, ErrInvalidConfig)
		})
	}
	_, err := NewReader(&pieces{}, Config{Format: Qemu}, nil)
	require.ErrorIs(t, err, ErrInvalidConfig)
}

// streamCase is a stream and what reading it must give.
type streamCase struct {
	name     string
	format   Format
	maxFrame int
	data     []byte
	// want are the frames delivered, in order.
	want [][]byte
	// msg is the FrameError's Msg, or "" for a clean end (io.EOF).
	msg string
	// eof says the FrameError wraps io.ErrUnexpectedEOF.
	eof bool
}

func streamCases() []streamCase {
	small := frames(50, 60, 1514, 14, 100, 1500)
	large := frames(6, 65534, 9000, 65000)
	runt := frame(10, 0)
	var cases []streamCase
	for _, f := range []Format{Qemu, Hyperkit} {
		plen := f.prefixLen()
		lenOf := func(n int) []byte { // a length prefix alone
			return encode(f, make([]byte, n))[:plen]
		}
		cases = append(cases,
			streamCase{name: "empty", format: f, data: nil},
			streamCase{name: "one frame", format: f, data: encode(f, small[0]), want: small[:1]},
			streamCase{name: "small frames", format: f, data: encode(f, small...), want: small},
			streamCase{name: "largest frames", format: f, data: encode(f, large...), want: large},
			streamCase{name: "runt dropped", format: f, data: encode(f, small[0], runt, small[1]), want: small[:2]},
			streamCase{name: "frame of MaxFrame", format: f, maxFrame: 1514, data: encode(f, small[1]), want: small[1:2]},
			streamCase{name: "zero length", format: f,
				data: append(encode(f, small[:3]...), append(lenOf(0), encode(f, small[3])...)...),
				want: small[:3], msg: "zero length"},
			streamCase{name: "longer than MaxFrame", format: f, maxFrame: 1500,
				data: encode(f, small[0], small[1], small[2]), want: small[:1], msg: "longer than the largest frame"},
			streamCase{name: "end inside a prefix", format: f,
				data: append(encode(f, small[:2]...), lenOf(100)[:plen-1]...), want: small[:2],
				msg: "stream ended inside a frame", eof: true},
			streamCase{name: "end after a prefix", format: f,
				data: append(encode(f, small[:2]...), lenOf(100)...), want: small[:2],
				msg: "stream ended inside a frame", eof: true},
			streamCase{name: "end inside a frame", format: f,
				data: func() []byte { b := encode(f, small[:3]...); return b[:len(b)-1] }(), want: small[:2],
				msg: "stream ended inside a frame", eof: true},
			streamCase{name: "end inside a large frame", format: f,
				data: func() []byte { b := encode(f, large[:2]...); return b[:len(b)-1000] }(), want: large[:1],
				msg: "stream ended inside a frame", eof: true},
		)
	}
	// Only 4 bytes can say more than a chunk holds.
	cases = append(cases, streamCase{name: "qemu length above a chunk", format: Qemu,
		data: append(encode(Qemu, small[0]), binary.BigEndian.AppendUint32(nil, 1<<31)...),
		want: small[:1], msg: "longer than the largest frame"})
	return cases
}

// checkStream checks what reading tc's stream delivered, and the error
// it ended with.
func checkStream(t *testing.T, tc streamCase, d *recorder, err error) {
	t.Helper()
	require.Equal(t, len(tc.want), len(d.frames), "frames delivered")
	for i := range tc.want {
		require.Equal(t, tc.want[i], d.frames[i], "frame %d", i)
		assert.Equal(t, header.IPv4ProtocolNumber, d.protos[i])
	}
	if len(tc.want) > 0 {
		require.NotEmpty(t, d.ends, "no batch end")
		assert.Equal(t, len(tc.want), d.ends[len(d.ends)-1], "the last frames' batch did not end")
	}
	if tc.msg == "" {
		require.ErrorIs(t, err, io.EOF)
		return
	}
	var fe *FrameError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, tc.msg, fe.Msg)
	assert.Equal(t, tc.format, fe.Format)
	assert.Equal(t, tc.eof, errors.Is(err, io.ErrUnexpectedEOF), "wraps io.ErrUnexpectedEOF")
}

// TestStreamPieces reads each stream from an io.Reader that returns it a
// few bytes at a time, so frames and prefixes are cut everywhere.
func TestStreamPieces(t *testing.T) {
	for _, tc := range streamCases() {
		for _, size := range []int{1, 3, 1000, 1 << 20} {
			if size == 1 && len(tc.data) > 1<<16 {
				continue // byte by byte, a large stream makes the test slow for nothing
			}
			t.Run(tc.format.String()+"/"+tc.name+"/"+strconv.Itoa(size), func(t *testing.T) {
				d := &recorder{}
				r, err := NewReader(&pieces{data: tc.data, size: size}, Config{Format: tc.format, MaxFrame: tc.maxFrame}, d)
				require.NoError(t, err)
				err = readAll(t, r, len(tc.data)+2)
				checkStream(t, tc, d, err)
				require.Equal(t, err, r.ReadBatch(), "the same error again")
			})
		}
	}
}

// TestStreamSocket reads each stream from a unix stream socket, written
// by another goroutine and shut down after it.
func TestStreamSocket(t *testing.T) {
	for _, tc := range streamCases() {
		t.Run(tc.format.String()+"/"+tc.name, func(t *testing.T) {
			ours, peer := socketPair(t, unix.SOCK_STREAM)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A write fails once ours is closed: the reader stopped early.
				for b := tc.data; len(b) > 0; {
					n, err := unix.Write(peer, b)
					if err == unix.EINTR {
						continue
					}
					if err != nil {
						return
					}
					b = b[n:]
				}
				unix.Shutdown(peer, unix.SHUT_WR)
			}()
			d := &recorder{}
			r, err := NewReader(ours, Config{Format: tc.format, MaxFrame: tc.maxFrame}, d)
			require.NoError(t, err)
			_, isSock := r.src.(*sockSource)
			require.True(t, isSock, "a unix socket is read as one")
			err = readAll(t, r, len(tc.data)+2)
			ours.Close()
			wg.Wait()
			checkStream(t, tc, d, err)
		})
	}
}

// TestChunkMoves checks that a frame is moved to the chunk's front only
// when a read cut it where the chunk was full.
func TestChunkMoves(t *testing.T) {
	for _, tc := range []struct {
		name      string
		frames    [][]byte
		size      int // bytes per Read
		maxMoves  int
		wantMoves bool
	}{
		{"whole frames per read", frames(40, 1514), 1516, 0, false},
		{"frames cut by reads, chunks reused", frames(40, 1514), 1000, 2, true},
		{"large frames", frames(8, 65534, 65000), 1 << 20, 8, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &recorder{}
			r, err := NewReader(&pieces{data: encode(Hyperkit, tc.frames...), size: tc.size}, Config{Format: Hyperkit}, d)
			require.NoError(t, err)
			require.ErrorIs(t, readAll(t, r, 1000), io.EOF)
			require.Equal(t, joined(tc.frames), joined(d.frames))
			s := r.Stats()
			assert.LessOrEqual(t, s.Moves, uint64(tc.maxMoves))
			assert.Equal(t, tc.wantMoves, s.Moves > 0)
			assert.Equal(t, uint64(len(tc.frames)), s.Frames)
		})
	}
}

// TestBatchEndWhenDrained checks that the batch ends where the socket
// has nothing more ready, before the reader waits, and not before.
func TestBatchEndWhenDrained(t *testing.T) {
	ours, peer := socketPair(t, unix.SOCK_STREAM)
	first, second := frames(20, 1514), frames(5, 200)
	writeAll(t, peer, encode(Hyperkit, first...))
	d := &recorder{flushed: make(chan struct{}, 4)}
	r, err := NewReader(ours, Config{Format: Hyperkit, MaxFrame: 1514}, d)
	require.NoError(t, err)
	for len(d.frames) < len(first) {
		require.NoError(t, r.ReadBatch())
	}
	require.Empty(t, d.ends, "a batch ended while the socket had more")
	done := make(chan error, 1)
	go func() { done <- r.ReadBatch() }() // finds nothing ready: ends the batch, then waits
	select {
	case <-d.flushed:
	case <-time.After(waitLimit):
		t.Fatal("no batch end while the reader waits")
	}
	writeAll(t, peer, encode(Hyperkit, second...))
	unix.Shutdown(peer, unix.SHUT_WR)
	require.NoError(t, <-done)
	require.ErrorIs(t, readAll(t, r, 100), io.EOF)
	assert.Equal(t, []int{len(first), len(first) + len(second)}, d.ends)
	assert.Equal(t, joined(append(first, second...)), joined(d.frames))
}

func TestDatagram(t *testing.T) {
	good := frames(100, 60, 1514, 800)
	for _, tc := range []struct {
		name string
		typ  int
		send [][]byte
		want int // frames delivered
		msg  string
	}{
		{"seqpacket", unix.SOCK_SEQPACKET, good, len(good), ""},
		{"datagrams", unix.SOCK_DGRAM, good, len(good), ""},
		{"seqpacket, runt dropped", unix.SOCK_SEQPACKET, [][]byte{good[0], frame(5, 1), good[1]}, 2, ""},
		{"datagram longer than MaxFrame", unix.SOCK_DGRAM, [][]byte{good[0], good[1], frame(1515, 2), good[2]}, 2, "longer than the largest frame"},
		{"zero-length datagram", unix.SOCK_DGRAM, [][]byte{good[0], {}, good[1]}, 1, "zero length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := socketPair(t, tc.typ)
			for _, f := range tc.send {
				_, err := unix.Write(peer, f)
				require.NoError(t, err)
			}
			d := &recorder{}
			r, err := NewReader(ours, Config{Format: Datagram, MaxFrame: 1514, Batch: 16}, d)
			require.NoError(t, err)
			var want [][]byte
			for _, f := range tc.send {
				if len(f) >= header.EthernetMinimumSize && len(f) <= 1514 {
					want = append(want, f)
				}
			}
			want = want[:tc.want]
			if tc.msg == "" {
				for len(d.frames) < len(want) {
					require.NoError(t, r.ReadBatch())
				}
				unix.Close(peer) // seqpacket: the end; datagram: nothing more
				if tc.typ == unix.SOCK_SEQPACKET {
					require.ErrorIs(t, readAll(t, r, 10), io.EOF)
				} else {
					r.Close()
				}
			} else {
				var fe *FrameError
				require.ErrorAs(t, readAll(t, r, 100), &fe)
				assert.Equal(t, tc.msg, fe.Msg)
				assert.Equal(t, int64(len(want)), fe.Offset)
			}
			require.Equal(t, want, d.frames)
			assert.Equal(t, len(want), d.ends[len(d.ends)-1])
			if tc.msg == "" {
				assert.Greater(t, r.Stats().Frames/max(1, r.Stats().Reads), uint64(1), "frames per recvmmsg")
			}
		})
	}
}

// TestSteadyStateAllocs checks that reading a stream socket and handing
// its frames over allocates nothing once the pools are warm.
func TestSteadyStateAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items, so pooled views allocate")
	}
	for _, tc := range []struct {
		name   string
		typ    int
		format Format
	}{{"stream", unix.SOCK_STREAM, Hyperkit}, {"seqpacket", unix.SOCK_SEQPACKET, Datagram}} {
		t.Run(tc.name, func(t *testing.T) {
			ours, peer := socketPair(t, tc.typ)
			fs := frames(30, 1514, 1000, 60)
			data := encode(tc.format, fs...)
			d := &countFrames{}
			r, err := NewReader(ours, Config{Format: tc.format, MaxFrame: 1514}, d)
			require.NoError(t, err)
			defer r.Close()
			allocs := testing.AllocsPerRun(200, func() {
				if tc.format == Datagram {
					for _, f := range fs {
						unix.Write(peer, f)
					}
				} else {
					unix.Write(peer, data)
				}
				for want := d.n + len(fs); d.n < want; {
					if r.ReadBatch() != nil {
						return
					}
				}
			})
			require.NoError(t, r.err)
			require.Zero(t, allocs)
		})
	}
}

// countFrames counts frames and releases them, allocating nothing.
type countFrames struct{ n, batches int }

func (c *countFrames) DeliverFragments(_ tcpip.NetworkProtocolNumber, _ int, buf buffer.Buffer) {
	buf.Release()
	c.n++
}

func (c *countFrames) Flush() { c.batches++ }

// pullUpper pulls each frame's header up, as netstack does, and records
// whether that copied the frame's memory.
type pullUpper struct{ frames, copied int }

func (p *pullUpper) DeliverFragments(_ tcpip.NetworkProtocolNumber, hdrLen int, buf buffer.Buffer) {
	views := buf.AsViewList()
	before := &views.Front().AsSlice()[0]
	v, ok := buf.PullUp(0, hdrLen)
	if !ok || &v.AsSlice()[0] != before {
		p.copied++
	}
	p.frames++
	buf.Release()
}

// TestFramesOwnTheirMemory checks that pulling a header up from a frame,
// as netstack does for each packet, does not copy it: a frame does not
// share its chunk, which gVisor's buffer would copy on write.
func TestFramesOwnTheirMemory(t *testing.T) {
	fs := frames(40, 1514, 60)
	for _, format := range []Format{Hyperkit, Datagram} {
		t.Run(format.String(), func(t *testing.T) {
			typ := unix.SOCK_STREAM
			if format == Datagram {
				typ = unix.SOCK_SEQPACKET
			}
			ours, peer := socketPair(t, typ)
			if format == Datagram {
				for _, f := range fs {
					_, err := unix.Write(peer, f)
					require.NoError(t, err)
				}
			} else {
				writeAll(t, peer, encode(format, fs...))
			}
			unix.Close(peer)
			d := &pullUpper{}
			r, err := NewReader(ours, Config{Format: format, MaxFrame: 1514}, d)
			require.NoError(t, err)
			require.ErrorIs(t, readAll(t, r, 100), io.EOF)
			assert.Equal(t, len(fs), d.frames)
			assert.Zero(t, d.copied, "frames copied by PullUp")
		})
	}
}

// packetRecorder is a plain stack.NetworkDispatcher that keeps each
// packet's link header and payload, and counts batch ends.
type packetRecorder struct {
	links, payloads [][]byte
	protos          []tcpip.NetworkProtocolNumber
	flushes         int
}

func (p *packetRecorder) DeliverNetworkPacket(proto tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	p.protos = append(p.protos, proto)
	p.links = append(p.links, append([]byte(nil), pkt.LinkHeader().Slice()...))
	p.payloads = append(p.payloads, pkt.Data().AsRange().ToSlice())
}

func (p *packetRecorder) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// flushingRecorder is a packetRecorder that ends batches.
type flushingRecorder struct{ *packetRecorder }

func (f flushingRecorder) Flush() { f.flushes++ }

// TestDeliverAsPackets checks that a plain dispatcher gets each frame as
// gVisor's fdbased would build it, and batch ends if it takes them.
func TestDeliverAsPackets(t *testing.T) {
	fs := frames(5, 1514, 60)
	for _, flushing := range []bool{false, true} {
		t.Run(strconv.FormatBool(flushing), func(t *testing.T) {
			rec := &packetRecorder{}
			var d stack.NetworkDispatcher = rec
			if flushing {
				d = flushingRecorder{rec}
			}
			r, err := NewReader(&pieces{data: encode(Qemu, fs...), size: 1 << 20}, Config{Format: Qemu}, DeliverAsPackets(d))
			require.NoError(t, err)
			require.ErrorIs(t, readAll(t, r, 10), io.EOF)
			require.Len(t, rec.payloads, len(fs))
			for i, f := range fs {
				assert.Equal(t, f[:header.EthernetMinimumSize], rec.links[i])
				assert.Equal(t, f[header.EthernetMinimumSize:], rec.payloads[i])
				assert.Equal(t, header.IPv4ProtocolNumber, rec.protos[i])
			}
			assert.Equal(t, flushing, rec.flushes > 0)
		})
	}
}
