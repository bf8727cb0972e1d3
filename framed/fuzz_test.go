package framed

import (
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// decodeStream is the reference: the frames a stream holds before its
// end or its first framing error, runts left out, and that error's Msg
// ("" for a clean end).
func decodeStream(f Format, maxFrame int, data []byte) ([][]byte, string) {
	var out [][]byte
	plen := f.prefixLen()
	for len(data) > 0 {
		if len(data) < plen {
			return out, "stream ended inside a frame"
		}
		n := f.frameLen(data)
		switch {
		case n == 0:
			return out, "zero length"
		case n > maxFrame:
			return out, "longer than the largest frame"
		case len(data) < plen+n:
			return out, "stream ended inside a frame"
		}
		if n >= header.EthernetMinimumSize {
			out = append(out, data[plen:plen+n])
		}
		data = data[plen+n:]
	}
	return out, ""
}

// FuzzStream reads arbitrary streams, cut into arbitrary reads, and
// checks that the Reader delivers exactly the frames the reference
// decoder finds, each once and whole, ends the last batch, and stops
// with the same error.
func FuzzStream(f *testing.F) {
	small := frames(5, 60, 1514, 100)
	f.Add(encode(Hyperkit, small...), false, uint16(1514), uint16(7))
	f.Add(encode(Qemu, small...), true, uint16(0), uint16(1))
	f.Add(encode(Qemu, frames(3, 65534, 30000)...), true, uint16(0), uint16(60000))
	f.Add(append(encode(Hyperkit, small...), 0, 0), false, uint16(1514), uint16(3000))
	f.Add(append(encode(Hyperkit, small...), 0xff, 0xff, 1), false, uint16(1000), uint16(2))
	f.Add(append(encode(Qemu, small...), 0, 0), true, uint16(1514), uint16(100))
	f.Fuzz(func(t *testing.T, data []byte, qemu bool, maxFrame, piece uint16) {
		format := Hyperkit
		if qemu {
			format = Qemu
		}
		max := int(maxFrame)
		if max == 0 {
			max = chunkSize
		}
		want, msg := decodeStream(format, max, data)
		d := &recorder{}
		r, err := NewReader(&pieces{data: data, size: int(piece%4096) + 1}, Config{Format: format, MaxFrame: int(maxFrame)}, d)
		require.NoError(t, err)
		err = readAll(t, r, len(data)+2)
		require.Equal(t, len(want), len(d.frames), "frames delivered")
		for i := range want {
			require.Equal(t, want[i], d.frames[i], "frame %d", i)
		}
		if len(want) > 0 {
			require.Equal(t, len(want), d.ends[len(d.ends)-1], "the last batch did not end")
		}
		if msg == "" {
			require.ErrorIs(t, err, io.EOF)
			return
		}
		var fe *FrameError
		require.True(t, errors.As(err, &fe), "error %v", err)
		require.Equal(t, msg, fe.Msg)
		require.Nil(t, r.view, "a chunk kept after the error")
	})
}
