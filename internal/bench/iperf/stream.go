package iperf

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netlro/netlro/internal/bench/cputime"
)

// chunkSize is the size of one write and one read, iperf3's default TCP
// block size.
const chunkSize = 128 << 10

// StreamResult is what one end saw of one TCP connection.
type StreamResult struct {
	// Bytes is the number of payload bytes written or read.
	Bytes int64 `json:"bytes"`
	// SHA256 is the hex SHA-256 of those bytes.
	SHA256 string `json:"sha256"`
}

// source is stream number i of a run: the words of a 64 KiB block drawn
// from ChaCha8 (seeded by the run's seed and i), each XORed with its
// position in the stream, so a byte out of place changes the stream's
// SHA-256 (words 64 KiB apart differ in the position term). It costs well
// under a nanosecond per word: generating ChaCha8 and hashing it inline
// took the sender 1.2 CPU seconds per GB, about 0.4 of the 2 cores in a
// TAP run, taken from the stacks being measured.
type source struct {
	block [sourceWords]uint64
	off   uint64 // bytes read so far
}

const sourceWords = 8192 // a power of two

func newSource(seed uint64, i int) *source {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], uint64(i))
	copy(key[16:], "netlro iperf ")
	r := rand.NewChaCha8(key)
	s := new(source)
	for k := range s.block {
		s.block[k] = r.Uint64()
	}
	return s
}

// NewSource returns stream i of seed, the bytes Send writes on its i-th
// connection, as an endless reader: for checkers of their own, like
// netstack-server's soak.
func NewSource(seed uint64, i int) io.Reader { return newSource(seed, i) }

func (s *source) word(p uint64) uint64 { return s.block[p&(sourceWords-1)] ^ p }

// Read fills b with the next len(b) bytes of the stream; it never fails.
func (s *source) Read(b []byte) (int, error) {
	n := len(b)
	if r := s.off % 8; r != 0 || len(b) < 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], s.word(s.off/8))
		k := copy(b, w[r:])
		b = b[k:]
		s.off += uint64(k)
	}
	if len(b) == 0 {
		return n, nil
	}
	p := s.off / 8 // s.off is word-aligned here
	for ; len(b) >= 32; p += 4 {
		w := b[:32]
		binary.LittleEndian.PutUint64(w[0:], s.word(p))
		binary.LittleEndian.PutUint64(w[8:], s.word(p+1))
		binary.LittleEndian.PutUint64(w[16:], s.word(p+2))
		binary.LittleEndian.PutUint64(w[24:], s.word(p+3))
		b = b[32:]
	}
	for ; len(b) >= 8; p++ {
		binary.LittleEndian.PutUint64(b, s.word(p))
		b = b[8:]
	}
	s.off = p*8 + uint64(len(b))
	if len(b) > 0 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], s.word(p))
		copy(b, w[:])
	}
	return n, nil
}

// streamSHA256 returns the hex SHA-256 of the first n bytes of stream i of
// seed.
func streamSHA256(seed uint64, i int, n int64) string {
	h := sha256.New()
	_, _ = io.CopyBuffer(h, io.LimitReader(newSource(seed, i), n), make([]byte, chunkSize))
	return hex.EncodeToString(h.Sum(nil))
}

// sendStream writes stream i of seed to c until limit bytes are written
// (limit > 0) or until is reached, then closes c's write side and waits for
// the peer to close, so that every byte was received when it returns.
// The result's SHA-256 is left to Send.
func sendStream(ctx context.Context, c net.Conn, seed uint64, i int, limit int64, until time.Time, sent *atomic.Int64) (StreamResult, error) {
	src := newSource(seed, i)
	buf := make([]byte, chunkSize)
	var n int64
	for ctx.Err() == nil {
		want := int64(len(buf))
		if limit > 0 {
			want = min(want, limit-n)
			if want == 0 {
				break
			}
		} else if !time.Now().Before(until) {
			break
		}
		b := buf[:want]
		_, _ = src.Read(b) // never fails
		w, err := c.Write(b)
		n += int64(w)
		sent.Add(int64(w))
		if err != nil {
			return StreamResult{}, fmt.Errorf("iperf: stream %d: write after %d bytes: %w", i, n, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return StreamResult{}, err
	}
	type closeWriter interface{ CloseWrite() error }
	if cw, ok := c.(closeWriter); ok {
		if err := cw.CloseWrite(); err != nil {
			return StreamResult{}, fmt.Errorf("iperf: stream %d: close write: %w", i, err)
		}
	}
	// The receiver closes once it has read everything: wait for that, so
	// that the run's time covers every byte. context cancellation is
	// handled by the caller closing c.
	var one [1]byte
	if _, err := c.Read(one[:]); err != nil && !errors.Is(err, io.EOF) {
		return StreamResult{}, fmt.Errorf("iperf: stream %d: wait for receiver close: %w", i, err)
	}
	return StreamResult{Bytes: n}, nil
}

// receiveStream reads c to the end, then closes it.
func receiveStream(c net.Conn, received *atomic.Int64) (StreamResult, error) {
	defer c.Close()
	h := sha256.New()
	buf := make([]byte, chunkSize)
	var n int64
	for {
		r, err := c.Read(buf)
		if r > 0 {
			h.Write(buf[:r])
			n += int64(r)
			received.Add(int64(r))
		}
		if errors.Is(err, io.EOF) {
			return StreamResult{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
		}
		if err != nil {
			return StreamResult{}, fmt.Errorf("iperf: read after %d bytes: %w", n, err)
		}
	}
}

// SendOptions say what a sender sends.
type SendOptions struct {
	// Streams is the number of TCP connections, at least 1.
	Streams int `json:"streams"`
	// Bytes is the total to send, split evenly over the streams. 0 means
	// send for Duration.
	Bytes int64 `json:"bytes"`
	// Duration is how long to send when Bytes is 0.
	Duration time.Duration `json:"duration"`
	// Seed selects the pseudo-random payload.
	Seed uint64 `json:"seed"`
}

// SendResult is what a sender sent.
type SendResult struct {
	// Streams holds one result per connection, in stream order.
	Streams []StreamResult `json:"streams"`
	// Pump is what the impairing pump did, when there was one.
	Pump *PumpStats `json:"pump,omitempty"`
	// CPUSeconds is the user plus system CPU time of the sending process
	// from the first byte written to the last stream's close, hashing
	// excluded. It is the sender's own only where the sender has a
	// process to itself, as netstack-server's child has; Run, which
	// shares one, leaves it 0.
	CPUSeconds float64 `json:"cpu_seconds,omitempty"`
	// TCP is what the sender's netstack counted, where the sender is a
	// netstack of the harness's.
	TCP *SenderTCPStats `json:"tcp,omitempty"`
}

// SenderTCPStats are the sender's counters that tell a stalled transfer:
// retransmission timeouts, and the drops of its own link.
type SenderTCPStats struct {
	Retransmits        uint64 `json:"retransmits"`
	Timeouts           uint64 `json:"timeouts"`
	SACKRecoveries     uint64 `json:"sack_recoveries"`
	LinkDropsQueueFull uint64 `json:"link_drops_queue_full"` // TxPacketsDroppedNoBufferSpace
}

// Bytes returns the total over all streams.
func (r SendResult) Bytes() int64 {
	var n int64
	for _, s := range r.Streams {
		n += s.Bytes
	}
	return n
}

// Dialer opens one connection to the receiver.
type Dialer func(ctx context.Context) (net.Conn, error)

// Send opens opts.Streams connections with dial, all before the first byte
// is written, and sends a seeded stream on each. sent, if not nil, counts
// bytes as they are written. Cancelling ctx closes every connection.
func Send(ctx context.Context, dial Dialer, opts SendOptions, sent *atomic.Int64) (SendResult, error) {
	if opts.Streams < 1 {
		return SendResult{}, fmt.Errorf("iperf: %d streams: want at least 1", opts.Streams)
	}
	if sent == nil {
		sent = new(atomic.Int64)
	}
	conns := make([]net.Conn, 0, opts.Streams)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range opts.Streams {
		c, err := dial(ctx)
		if err != nil {
			return SendResult{}, fmt.Errorf("iperf: dial stream %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.Close()
		}
	})
	defer stop()

	until := time.Now().Add(opts.Duration)
	cpu := cputime.Total()
	res := SendResult{Streams: make([]StreamResult, opts.Streams)}
	errs := make([]error, opts.Streams)
	var wg sync.WaitGroup
	for i, c := range conns {
		limit := int64(0)
		if opts.Bytes > 0 {
			// Spread the remainder over the first streams.
			limit = opts.Bytes / int64(opts.Streams)
			if int64(i) < opts.Bytes%int64(opts.Streams) {
				limit++
			}
			if limit == 0 {
				limit = 1
			}
		}
		wg.Go(func() {
			res.Streams[i], errs[i] = sendStream(ctx, c, opts.Seed, i, limit, until, sent)
		})
	}
	wg.Wait()
	res.CPUSeconds = (cputime.Total() - cpu).Seconds()
	if err := errors.Join(errs...); err != nil {
		return SendResult{}, err
	}
	// Hashed now, the streams regenerated from the seed, so that hashing
	// takes no CPU from the transfer.
	for i := range res.Streams {
		res.Streams[i].SHA256 = streamSHA256(opts.Seed, i, res.Streams[i].Bytes)
	}
	return res, nil
}

// Verify reports whether every stream the receiver read is one the sender
// sent, byte for byte: the same number of streams, and the same multiset
// of lengths and SHA-256 sums (the receiver does not know which stream a
// connection carried).
func Verify(sent SendResult, received []StreamResult) bool {
	if len(sent.Streams) != len(received) {
		return false
	}
	key := func(s StreamResult) string { return fmt.Sprintf("%s/%d", s.SHA256, s.Bytes) }
	a := make([]string, len(received))
	b := make([]string, len(received))
	for i := range received {
		a[i], b[i] = key(sent.Streams[i]), key(received[i])
	}
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
