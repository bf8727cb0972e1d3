package lro

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// TestHdrSum: the header sum agrees with gVisor's checksum for every
// whole number of 32-bit words a header can have, from any starting sum.
func TestHdrSum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	b := make([]byte, 60)
	for range 200 {
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		acc := uint64(r.Uint32())
		for n := 0; n <= len(b); n += 4 {
			want := checksum.Checksum(b[:n], fold(acc))
			// Ones' complement: 0 and 0xffff are the same number.
			assert.Equal(t, uint32(want)%0xffff, uint32(fold(hdrSum(acc, b[:n])))%0xffff, "%d bytes", n)
		}
	}
}
