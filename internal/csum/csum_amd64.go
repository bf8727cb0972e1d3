package csum

import "golang.org/x/sys/cpu"

// chunkBlocks is how many 128-byte blocks the AVX2 kernel sums into its
// 32-bit lanes before folding them (csum_amd64.s reads it via go_asm.h). A
// lane gets one add of at most 0xffff per block, plus one from the 64/32-byte
// tail, so each lane sum stays below 4097*0xffff < 2^28 and the fold can add
// all eight accumulators in 32-bit lanes (< 2^31).
const chunkBlocks = 4096

var (
	// hasAVX2 reports whether the CPU (and OS, for the YMM state) supports AVX2.
	hasAVX2 = cpu.X86.HasAVX2
	// useAVX2 selects the implementation; tests switch it to exercise the
	// generic path on AVX2 machines too.
	useAVX2 = hasAVX2
)

func sum(buf []byte, initial uint16) uint16 {
	if useAVX2 {
		return checksumAVX2(buf, initial)
	}
	return checksumGeneric(buf, initial)
}

// checksumAVX2 is implemented in csum_amd64.s. It must only be called when
// hasAVX2 is true.
//
//go:noescape
func checksumAVX2(buf []byte, initial uint16) uint16
