package iperf

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"testing"

	"github.com/stretchr/testify/require"
)

// A stream reads the same however the reads are split, its words do not
// repeat (not even 64 KiB apart, where the block does), and streamSHA256
// hashes exactly those bytes.
func TestSource(t *testing.T) {
	const n = 1 << 18
	whole := make([]byte, n)
	_, _ = newSource(7, 3).Read(whole)

	split := make([]byte, 0, n)
	src := newSource(7, 3)
	for k := 1; len(split) < n; k = k*3%61 + 1 { // lengths 1..61, most unaligned
		b := make([]byte, min(k, n-len(split)))
		_, _ = src.Read(b)
		split = append(split, b...)
	}
	require.Equal(t, whole, split)

	seen := make(map[uint64]bool, n/8)
	for w := range n / 8 {
		v := binary.LittleEndian.Uint64(whole[8*w:])
		require.False(t, seen[v], "word %d repeats", w)
		seen[v] = true
	}

	sum := sha256.Sum256(whole[:n-5])
	require.Equal(t, hex.EncodeToString(sum[:]), streamSHA256(7, 3, n-5))

	for _, other := range []struct {
		seed uint64
		i    int
	}{{7, 4}, {8, 3}} {
		b := make([]byte, 64)
		_, _ = newSource(other.seed, other.i).Read(b)
		require.False(t, bytes.Equal(b, whole[:64]), "stream %+v equals stream {7 3}", other)
	}
}

func BenchmarkSource(b *testing.B) {
	src := newSource(1, 0)
	buf := make([]byte, chunkSize)
	b.SetBytes(chunkSize)
	for b.Loop() {
		_, _ = src.Read(buf)
	}
}
