//go:build !amd64

package csum

// useAVX2 exists on every architecture so the tests can toggle it; only
// amd64 has an AVX2 kernel.
var (
	hasAVX2 = false
	useAVX2 = false
)

func sum(buf []byte, initial uint16) uint16 {
	return checksumGeneric(buf, initial)
}
