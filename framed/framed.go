package framed

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// Format says how frames are delimited on a transport.
type Format uint8

const (
	// Qemu is a stream of frames, each after its length as 4 bytes, big
	// endian (qemu's -netdev stream and socket backends).
	Qemu Format = iota + 1
	// Hyperkit is a stream of frames, each after its length as 2 bytes,
	// little endian (hyperkit, gvisor-tap-vsock's stdio, rootlesskit's
	// child).
	Hyperkit
	// Datagram is one frame per datagram (vfkit, bess).
	Datagram
)

// String returns the format's name.
func (f Format) String() string {
	switch f {
	case Qemu:
		return "qemu"
	case Hyperkit:
		return "hyperkit"
	case Datagram:
		return "datagram"
	}
	return fmt.Sprintf("Format(%d)", uint8(f))
}

// prefixLen returns the length of the format's length prefix: 0 for
// datagrams.
func (f Format) prefixLen() int {
	switch f {
	case Qemu:
		return 4
	case Hyperkit:
		return 2
	}
	return 0
}

// frameLen decodes a length prefix of prefixLen bytes.
func (f Format) frameLen(p []byte) int {
	if f == Qemu {
		return int(binary.BigEndian.Uint32(p))
	}
	return int(binary.LittleEndian.Uint16(p))
}

// chunkSize is the size of the chunk each read fills: the largest that
// gVisor's buffer pool keeps, so that a chunk costs no allocation.
const chunkSize = buffer.MaxChunkSize

// ErrInvalidConfig is wrapped by the error NewReader returns for a Config
// it cannot use.
var ErrInvalidConfig = errors.New("invalid config")

// Config says how a Reader reads its transport. Format is required; the
// zero value of every other field means its default.
type Config struct {
	// Format is the transport's framing.
	Format Format
	// MaxFrame is the length of the largest frame accepted, its Ethernet
	// header included: usually the MTU plus header.EthernetMinimumSize.
	// A longer frame is a framing error. 0 means the largest a chunk
	// holds, buffer.MaxChunkSize; it may not be more.
	MaxFrame int
	// Batch is the most datagrams read per recvmmsg (Datagram only),
	// and no more than fit in one chunk in slots of MaxFrame bytes. 0
	// means 64.
	Batch int
}

// Stats is a snapshot of a Reader's counters.
type Stats struct {
	// Frames is the number of frames delivered, and Bytes their length,
	// Ethernet headers included, length prefixes not.
	Frames, Bytes uint64
	// Reads is the number of system calls (or Read calls) that returned
	// data.
	Reads uint64
	// Batches is the number of batches that delivered a frame; each ended
	// with one Flush when the dispatcher is an rxbatch.Flusher.
	Batches uint64
	// Moves counts frames whose start was moved to the front of the chunk
	// because a read cut them where the chunk was full.
	Moves uint64
	// Runts counts frames dropped for being shorter than an Ethernet
	// header.
	Runts uint64
}

// FrameError describes a frame that the transport's framing does not
// allow. The Reader stops at it.
type FrameError struct {
	// Format is the transport's framing.
	Format Format
	// Offset is where the frame starts: its length prefix's offset in the
	// stream, or the number of datagrams read before it.
	Offset int64
	// Length is the frame's length as its prefix gave it, or the
	// datagram's (MaxFrame+1 for one cut short), or for a stream that
	// ended inside a frame the number of its bytes that arrived, its
	// prefix included.
	Length int
	// Msg says what is wrong with it.
	Msg string
	// Err is io.ErrUnexpectedEOF for a stream that ended inside a frame,
	// and nil otherwise.
	Err error
}

// Error implements error.
func (e *FrameError) Error() string {
	return fmt.Sprintf("framed: %s frame at offset %d, length %d: %s", e.Format, e.Offset, e.Length, e.Msg)
}

// Unwrap returns e.Err.
func (e *FrameError) Unwrap() error { return e.Err }

// A source reads a transport into a reader's chunks.
type source interface {
	// read reads a stream into p. Without wait it returns errWouldBlock
	// when nothing is ready; with wait it waits for something. It
	// returns 0 and io.EOF at the end of the stream.
	read(p []byte, wait bool) (int, error)
	// readMsgs reads up to len(lens) datagrams into slots of size bytes
	// in p, without waiting unless wait is set, and stores their lengths
	// (a length above size for one that was cut short). It returns how
	// many it read.
	readMsgs(p []byte, size int, lens []int, wait bool) (int, error)
}

// errWouldBlock says that a source has nothing ready.
var errWouldBlock = errors.New("framed: nothing ready")

// Reader reads frames from one transport and delivers them to one
// dispatcher. It is used by one goroutine at a time.
type Reader struct {
	cfg   Config
	src   source
	frag  rxbatch.FragmentDispatcher
	flush rxbatch.Flusher

	// view is the chunk being filled: bytes [0, fill) were read, and
	// those before pos handed over; nil before the first read.
	view      *buffer.View
	pos, fill int
	// pending is the length of the frame starting at pos whose length
	// prefix was already consumed (when it was moved to a new chunk), or
	// 0.
	pending int
	// off is the stream offset (or datagram index) of view's byte 0.
	off int64
	// unflushed says frames were delivered since the last Flush.
	unflushed bool
	// drained says the last read found the socket emptied: it returned
	// less than it had room for. The batch then ends, and the next read
	// waits at once rather than first ask without waiting.
	drained bool
	// lens holds each datagram's length (Datagram only).
	lens []int
	// err is the error that stopped the Reader.
	err   error
	stats Stats
}

// NewReader returns a Reader of conn, framed as cfg says, that delivers
// to d. A conn that is a socket (a net.Conn over one, on Linux) is read
// without waiting first, so that the Reader knows where a batch ends, and
// a Datagram one with recvmmsg; any other conn is read with Read, a batch
// per call, and Datagram needs a socket.
func NewReader(conn io.Reader, cfg Config, d rxbatch.FragmentDispatcher) (*Reader, error) {
	switch {
	case cfg.Format < Qemu || cfg.Format > Datagram:
		return nil, fmt.Errorf("framed: Format %d unknown: %w", cfg.Format, ErrInvalidConfig)
	case cfg.MaxFrame < 0 || cfg.MaxFrame > chunkSize:
		return nil, fmt.Errorf("framed: MaxFrame %d outside [0, %d]: %w", cfg.MaxFrame, chunkSize, ErrInvalidConfig)
	case cfg.Batch < 0:
		return nil, fmt.Errorf("framed: Batch %d < 0: %w", cfg.Batch, ErrInvalidConfig)
	case d == nil:
		return nil, fmt.Errorf("framed: no dispatcher: %w", ErrInvalidConfig)
	}
	if cfg.MaxFrame == 0 {
		cfg.MaxFrame = chunkSize
	}
	if cfg.Batch == 0 {
		cfg.Batch = 64
	}
	src, err := newSource(conn, cfg.Format == Datagram)
	if err != nil {
		return nil, err
	}
	r := &Reader{cfg: cfg, src: src, frag: d}
	r.flush, _ = d.(rxbatch.Flusher)
	if cfg.Format == Datagram {
		// One chunk per recvmmsg, cut into slots of MaxFrame bytes.
		r.lens = make([]int, min(cfg.Batch, chunkSize/cfg.MaxFrame))
	}
	return r, nil
}

// Stats returns the Reader's counters. It is called by the goroutine
// that calls ReadBatch, or after.
func (r *Reader) Stats() Stats { return r.stats }

// ReadBatch reads what the transport has ready, waiting if nothing is,
// and delivers every whole frame it read. Where the transport has nothing
// more ready it first ends the batch of frames delivered so far with
// Flush. It returns io.EOF when a stream ends between frames, a
// *FrameError when framing fails, or the transport's error; after an
// error, every call returns the same one.
func (r *Reader) ReadBatch() error {
	if r.err != nil {
		return r.err
	}
	if r.cfg.Format == Datagram {
		r.err = r.readDatagrams()
	} else {
		r.err = r.readStream()
	}
	if r.err != nil {
		r.endBatch()
		r.release()
	}
	return r.err
}

// Close ends the batch delivered so far and releases the chunk the
// Reader holds. It does not close the transport. ReadBatch then returns
// io.ErrClosedPipe.
func (r *Reader) Close() {
	if r.err == nil {
		r.err = io.ErrClosedPipe
	}
	r.endBatch()
	r.release()
}

// read reads into p. After a read that emptied the socket it ends the
// batch and waits for the next; otherwise it reads without waiting
// first, and ends the batch and waits only if nothing was ready.
func (r *Reader) read(p []byte) (int, error) {
	if r.drained {
		r.endBatch()
	}
	n, err := r.src.read(p, r.drained)
	if err == errWouldBlock {
		r.endBatch()
		n, err = r.src.read(p, true)
	}
	if n > 0 {
		r.stats.Reads++
	}
	r.drained = n < len(p)
	return n, err
}

// endBatch calls Flush if frames were delivered since the last one.
func (r *Reader) endBatch() {
	if !r.unflushed {
		return
	}
	r.unflushed = false
	r.stats.Batches++
	if r.flush != nil {
		r.flush.Flush()
	}
}

// deliver hands over the frame of n bytes at offset at of the chunk, in
// a pooled view of its own.
//
// It copies the frame: gVisor's buffer copies a whole chunk that views
// share when netstack pulls a header up from one of them
// (buffer.Buffer.PullUp, copy on write), so frames handed over as views
// of the read chunk would cost a chunk each, not a frame.
func (r *Reader) deliver(at, n int) {
	if n < header.EthernetMinimumSize {
		r.stats.Runts++
		return
	}
	v := buffer.NewViewWithData(r.view.AsSlice()[at : at+n])
	proto := tcpip.NetworkProtocolNumber(binary.BigEndian.Uint16(v.AsSlice()[12:]))
	r.stats.Frames++
	r.stats.Bytes += uint64(n)
	r.unflushed = true
	r.frag.DeliverFragments(proto, header.EthernetMinimumSize, buffer.MakeWithView(v))
}

// release returns the chunk to the pool.
func (r *Reader) release() {
	if r.view != nil {
		r.view.Release()
		r.view = nil
	}
}

// DeliverAsPackets wraps d, a plain dispatcher, in an
// rxbatch.FragmentDispatcher that builds each frame's PacketBuffer with
// rxbatch.NewPacket, as gVisor's fdbased builds one, and calls
// d.DeliverNetworkPacket. It ends batches on d when d
// is an rxbatch.Flusher.
func DeliverAsPackets(d stack.NetworkDispatcher) rxbatch.FragmentDispatcher {
	if f, ok := d.(rxbatch.Flusher); ok {
		return flushingPackets{packets{d}, f}
	}
	return packets{d}
}

// packets is DeliverAsPackets' dispatcher.
type packets struct{ d stack.NetworkDispatcher }

// DeliverFragments implements rxbatch.FragmentDispatcher.
func (p packets) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	pkt := rxbatch.NewPacket(proto, linkHeaderLen, buf, false) // a frame transport verifies nothing
	p.d.DeliverNetworkPacket(proto, pkt)
	pkt.DecRef()
}

// flushingPackets is packets for a dispatcher that ends batches.
type flushingPackets struct {
	packets
	rxbatch.Flusher
}
