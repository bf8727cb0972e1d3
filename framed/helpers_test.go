package framed

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// recorder is a dispatcher that keeps a copy of every frame and where
// each batch ended.
type recorder struct {
	frames [][]byte
	protos []tcpip.NetworkProtocolNumber
	// ends[i] is the number of frames delivered when the i-th Flush came.
	ends []int
	// flushed, if set, is sent to at each Flush.
	flushed chan struct{}
}

// DeliverFragments implements rxbatch.FragmentDispatcher.
func (r *recorder) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	if linkHeaderLen != header.EthernetMinimumSize {
		panic("link header length")
	}
	r.frames = append(r.frames, buf.Flatten())
	r.protos = append(r.protos, proto)
	buf.Release()
}

// Flush implements rxbatch.Flusher.
func (r *recorder) Flush() {
	r.ends = append(r.ends, len(r.frames))
	if r.flushed != nil {
		r.flushed <- struct{}{}
	}
}

// frame returns an Ethernet frame of n bytes, n >= 14 (shorter: the
// first n bytes of one), carrying IPv4, whose bytes after the header
// tell it from others by seed.
func frame(n, seed int) []byte {
	f := make([]byte, max(n, header.EthernetMinimumSize))
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: "\x02\x00\x00\x00\x00\x01",
		DstAddr: "\x02\x00\x00\x00\x00\x02",
		Type:    header.IPv4ProtocolNumber,
	})
	for i := header.EthernetMinimumSize; i < len(f); i++ {
		f[i] = byte(seed*7 + i)
	}
	return f[:n]
}

// frames returns count frames of the given sizes, cycled.
func frames(count int, sizes ...int) [][]byte {
	out := make([][]byte, count)
	for i := range out {
		out[i] = frame(sizes[i%len(sizes)], i)
	}
	return out
}

// encode returns frames framed as f: each after its length prefix, or
// for Datagram the frames' bytes one after another.
func encode(f Format, frames ...[]byte) []byte {
	var b []byte
	for _, fr := range frames {
		switch f {
		case Qemu:
			b = binary.BigEndian.AppendUint32(b, uint32(len(fr)))
		case Hyperkit:
			b = binary.LittleEndian.AppendUint16(b, uint16(len(fr)))
		}
		b = append(b, fr...)
	}
	return b
}

// pieces is an io.Reader that returns its data at most size bytes per
// Read.
type pieces struct {
	data []byte
	size int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.data) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), p.size)], p.data)
	p.data = p.data[n:]
	return n, nil
}

// socketPair returns the two ends of a unix socket pair of type typ,
// ours as a net.Conn, closed when the test ends.
func socketPair(t testing.TB, typ int) (ours net.Conn, peer int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, typ|unix.SOCK_CLOEXEC, 0)
	require.NoError(t, err)
	f := os.NewFile(uintptr(fds[0]), "framed-test")
	ours, err = net.FileConn(f)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	t.Cleanup(func() {
		ours.Close()
		unix.Close(fds[1])
	})
	return ours, fds[1]
}

// writeAll writes b to fd, blocking while the socket is full.
func writeAll(t testing.TB, fd int, b []byte) {
	t.Helper()
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		require.NoError(t, err)
		b = b[n:]
	}
}

// readAll calls ReadBatch until it fails, at most limit times, and
// returns the error.
func readAll(t testing.TB, r *Reader, limit int) error {
	t.Helper()
	for range limit {
		if err := r.ReadBatch(); err != nil {
			return err
		}
	}
	t.Fatalf("no error after %d batches", limit)
	return nil
}

// joined returns the frames' bytes one after another.
func joined(frames [][]byte) []byte { return bytes.Join(frames, nil) }
