package iperf

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Profile is a link impairment, applied to frames on their way from the
// sender to the receiver (the ACK direction is left clean: it is not what
// LRO sees). The zero Profile changes nothing.
type Profile struct {
	// Name is how flags and test names call the profile.
	Name string `json:"name"`
	// Loss is the fraction of frames dropped.
	Loss float64 `json:"loss,omitempty"`
	// Reorder is the fraction of frames held back until 1 to 3 later
	// frames have passed (or the link goes idle).
	Reorder float64 `json:"reorder,omitempty"`
	// Dup is the fraction of frames delivered twice.
	Dup float64 `json:"dup,omitempty"`
	// Corrupt is the fraction of frames that get one random byte flipped,
	// checksums left as they were.
	Corrupt float64 `json:"corrupt,omitempty"`
	// MSS, if not zero, is the MSS the receiver advertises, so that the
	// sender sends segments that small.
	MSS int `json:"mss,omitempty"`
	// Streams, if not zero, is the number of TCP connections at once,
	// instead of the run's.
	Streams int `json:"streams,omitempty"`
}

// Impairs reports whether p changes frames on the link, so that a pump is
// needed.
func (p Profile) Impairs() bool {
	return p.Loss > 0 || p.Reorder > 0 || p.Dup > 0 || p.Corrupt > 0
}

// Profiles are the named impairments of the end-to-end tests and of the
// example's -impair flag.
var Profiles = []Profile{
	{Name: "clean"},
	{Name: "loss1", Loss: 0.01},
	{Name: "loss5", Loss: 0.05},
	{Name: "reorder", Reorder: 0.05},
	{Name: "dup", Dup: 0.02},
	{Name: "corrupt", Corrupt: 0.005},
	{Name: "mixed", Loss: 0.01, Reorder: 0.05, Dup: 0.02, Corrupt: 0.005},
	{Name: "tiny-mss", MSS: 88}, // header.TCPMinimumMSS, the least netstack accepts
	{Name: "many-flows", Streams: 64},
}

// ParseProfile returns the Profile named name.
func ParseProfile(name string) (Profile, error) {
	names := make([]string, len(Profiles))
	for i, p := range Profiles {
		if p.Name == name {
			return p, nil
		}
		names[i] = p.Name
	}
	return Profile{}, fmt.Errorf("iperf: unknown impairment profile %q, want one of %s", name, strings.Join(names, ", "))
}

// PumpStats counts what a Pump did to the frames it forwarded from the
// sender.
type PumpStats struct {
	Frames     uint64 `json:"frames"`     // frames read from the sender
	Dropped    uint64 `json:"dropped"`    // frames lost
	Reordered  uint64 `json:"reordered"`  // frames held back
	Duplicated uint64 `json:"duplicated"` // frames sent twice
	Corrupted  uint64 `json:"corrupted"`  // frames with a byte flipped
}

// Pump forwards frames between two SOCK_SEQPACKET sockets, impairing those
// from the sender side by a Profile. Its decisions come from a generator
// seeded once, so the n-th frame is treated the same in every run.
type Pump struct {
	toReceiver, toSender PacketConn
	wg                   sync.WaitGroup

	frames, dropped, reordered, duplicated, corrupted atomic.Uint64
}

// idleRelease is how long the link may be idle before held-back frames
// are released: reordering must not turn into loss at the end of a burst.
const idleRelease = time.Millisecond

// NewPump starts forwarding between senderFD and receiverFD. It
// duplicates the fds; the caller still closes its own.
func NewPump(senderFD, receiverFD int, p Profile, seed uint64) (*Pump, error) {
	s, err := fileConn(senderFD, "sender")
	if err != nil {
		return nil, err
	}
	r, err := fileConn(receiverFD, "receiver")
	if err != nil {
		s.Close()
		return nil, err
	}
	return NewPumpConns(s, r, p, seed), nil
}

// PacketConn is one side of a link a Pump forwards: each Read returns one
// frame and each Write sends one. A *net.UnixConn on a SOCK_SEQPACKET
// socket is one, and so is an *os.File on a TUN device opened
// non-blocking.
type PacketConn interface {
	io.ReadWriteCloser
	SetReadDeadline(time.Time) error
}

// NewPumpConns starts forwarding between sender and receiver, as NewPump
// does between two sockets. Close closes both.
func NewPumpConns(sender, receiver PacketConn, p Profile, seed uint64) *Pump {
	pu := &Pump{toReceiver: receiver, toSender: sender}
	pu.wg.Go(func() { pu.forward(sender, receiver, p, rand.New(rand.NewPCG(seed, 0x6e65746c726f))) })
	pu.wg.Go(func() { pu.forward(receiver, sender, Profile{}, nil) })
	return pu
}

// fileConn wraps a duplicate of fd in a net.UnixConn, so reads and writes
// wait in Go's poller and Close wakes them.
func fileConn(fd int, name string) (*net.UnixConn, error) {
	// net.FileConn duplicates f's fd; f itself wraps a duplicate too, so
	// that closing it leaves the caller's fd alone.
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("iperf: pump: %s fd %d: dup: %w", name, fd, err)
	}
	f := os.NewFile(uintptr(dup), name)
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("iperf: pump: %s fd %d: %w", name, fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("iperf: pump: %s fd %d is a %T, want a unix socket", name, fd, c)
	}
	return uc, nil
}

// Stats returns what the pump did so far.
func (p *Pump) Stats() PumpStats {
	return PumpStats{
		Frames:     p.frames.Load(),
		Dropped:    p.dropped.Load(),
		Reordered:  p.reordered.Load(),
		Duplicated: p.duplicated.Load(),
		Corrupted:  p.corrupted.Load(),
	}
}

// Close stops forwarding and waits for the pump's goroutines.
func (p *Pump) Close() {
	p.toReceiver.Close()
	p.toSender.Close()
	p.wg.Wait()
}

// held is a frame held back until after more frames have passed.
type held struct {
	frame []byte
	after int
}

// forward copies frames from src to dst, applying prof with rng (nil for
// a clean direction), until either side closes.
func (p *Pump) forward(src, dst PacketConn, prof Profile, rng *rand.Rand) {
	buf := make([]byte, 1<<16)
	var queue []held
	send := func(b []byte) bool {
		_, err := dst.Write(b)
		return err == nil
	}
	release := func(all bool) bool {
		kept := queue[:0]
		for _, h := range queue {
			h.after--
			if all || h.after <= 0 {
				if !send(h.frame) {
					return false
				}
				continue
			}
			kept = append(kept, h)
		}
		queue = kept
		return true
	}
	for {
		var deadline time.Time
		if len(queue) > 0 {
			deadline = time.Now().Add(idleRelease)
		}
		src.SetReadDeadline(deadline)
		n, err := src.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if !release(true) {
					return
				}
				continue
			}
			return // closed by Close, or by the peer
		}
		frame := buf[:n]
		if rng == nil {
			if !send(frame) {
				return
			}
			continue
		}
		p.frames.Add(1)
		if !p.impair(frame, prof, rng, &queue) {
			continue
		}
		if !release(false) {
			return
		}
	}
}

// impair decides the fate of one frame: it sends it (perhaps corrupted or
// twice), drops it, or queues a copy to be held back. It reports whether
// the frame counted as passing, so held frames move one step closer to
// release.
func (p *Pump) impair(frame []byte, prof Profile, rng *rand.Rand, queue *[]held) bool {
	// Draw every decision for every frame, so that one profile's choices
	// do not shift another's.
	loss, reorder, dup, corrupt := rng.Float64(), rng.Float64(), rng.Float64(), rng.Float64()
	pos, flip, after := rng.IntN(len(frame)), byte(1+rng.IntN(255)), 1+rng.IntN(3)
	if loss < prof.Loss {
		p.dropped.Add(1)
		return false
	}
	if corrupt < prof.Corrupt {
		p.corrupted.Add(1)
		frame[pos] ^= flip
	}
	if reorder < prof.Reorder {
		p.reordered.Add(1)
		*queue = append(*queue, held{frame: append([]byte(nil), frame...), after: after})
		return false
	}
	copies := 1
	if dup < prof.Dup {
		p.duplicated.Add(1)
		copies = 2
	}
	for range copies {
		if _, err := p.toReceiver.Write(frame); err != nil {
			return false
		}
	}
	return true
}
