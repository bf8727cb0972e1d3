package framed

import (
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// cycle is an io.Reader that returns its stream over and over, size
// bytes per Read, so that every Read is alike.
type cycle struct {
	data []byte
	at   int
	size int
}

func (c *cycle) Read(p []byte) (int, error) {
	n := 0
	for n < min(len(p), c.size) {
		m := copy(p[n:min(len(p), c.size)], c.data[c.at:])
		n += m
		c.at = (c.at + m) % len(c.data)
	}
	return n, nil
}

// pullUpRelease is what netstack does to each frame at least: pull its
// headers up, then release it.
type pullUpRelease struct{}

func (pullUpRelease) DeliverFragments(_ tcpip.NetworkProtocolNumber, _ int, buf buffer.Buffer) {
	buf.PullUp(0, 54)
	buf.Release()
}

// BenchmarkReadBatch reads a hyperkit stream of 1514-byte frames, 64 KiB
// per read, and hands each frame to a dispatcher that pulls its headers
// up, as netstack does.
func BenchmarkReadBatch(b *testing.B) {
	stream := encode(Hyperkit, frames(173, 1514)...) // not a divisor of the read size: frames are cut
	r, err := NewReader(&cycle{data: stream, size: chunkSize}, Config{Format: Hyperkit, MaxFrame: 1514}, pullUpRelease{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.ReportAllocs()
	b.SetBytes(chunkSize)
	for b.Loop() {
		if err := r.ReadBatch(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(r.Stats().Frames)/float64(b.N), "frames/op")
}
