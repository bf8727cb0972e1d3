package csum

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestChecksumChunkBoundaries hits the AVX2 kernel's lane folds: lengths
// just around whole chunks, with and without the 64/32-byte vector tail.
func TestChecksumChunkBoundaries(t *testing.T) {
	const chunk = chunkBlocks * 128
	rng := rand.New(rand.NewPCG(7, 8))
	random := make([]byte, 2*chunk+512)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	ones := bytes.Repeat([]byte{0xff}, len(random))
	var lengths []int
	for _, base := range []int{chunk, 2 * chunk} {
		for _, d := range []int{-129, -128, -127, -33, -1, 0, 1, 31, 32, 64, 96, 127, 128, 129, 128 + 64 + 32 + 31} {
			lengths = append(lengths, base+d)
		}
	}
	forEachImpl(t, func(t *testing.T) {
		for _, n := range lengths {
			for _, off := range []int{0, 1, 6} {
				requireGVisor(t, random[off:off+n], uint16(rng.Uint32()))
				requireGVisor(t, ones[off:off+n], 0xffff)
			}
		}
	})
}
