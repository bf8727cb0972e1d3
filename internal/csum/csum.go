// Package csum computes the Internet checksum (RFC 1071) faster than
// gvisor.dev/gvisor/pkg/tcpip/checksum on amd64.
//
// It exists because summing every TCP payload once is on the hot path of
// the LRO engine (package lro), which must verify each segment before it
// merges: gVisor's portable loop adds 8 bytes at a time with carries,
// while the AVX2 kernel here sums 128 bytes per loop iteration in 32-bit
// vector lanes (BenchmarkChecksum compares the two; docs/results.md has
// the figures). Results are bit-for-bit those of gVisor's
// checksum.Checksum, so the two are interchangeable.
package csum

import (
	"math/bits"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// Checksum returns the 16-bit ones'-complement sum of buf, added to initial,
// exactly as gvisor.dev/gvisor/pkg/tcpip/checksum.Checksum(buf, initial) does
// (big-endian 16-bit words, an odd last byte padded with zero, result not complemented).
//
// As with gVisor, initial must be a sum over an even number of bytes for the
// result to be the checksum of the concatenated data.
func Checksum(buf []byte, initial uint16) uint16 {
	return sum(buf, initial)
}

// Concat returns the sum of a range whose first bytes sum to total and
// whose next bytes, starting at byte offset at of the range, sum to sum.
// Bytes at an odd offset sit in the other halves of the 16-bit words, so
// their sum is byte-swapped first (RFC 1071 2(B)).
func Concat(total, sum uint16, at int) uint16 {
	if at&1 != 0 {
		sum = bits.RotateLeft16(sum, 8)
	}
	return checksum.Combine(total, sum)
}
