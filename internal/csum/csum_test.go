package csum

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
)

// impls lists the implementations this machine can run, so both the AVX2
// kernel and the generic fallback are tested where AVX2 exists.
func impls() []bool {
	if hasAVX2 {
		return []bool{false, true}
	}
	return []bool{false}
}

func implName(avx bool) string {
	if avx {
		return "avx2"
	}
	return "generic"
}

// withImpl runs f with useAVX2 set to avx, restoring it afterwards.
func withImpl(avx bool, f func()) {
	old := useAVX2
	useAVX2 = avx
	defer func() { useAVX2 = old }()
	f()
}

// forEachImpl runs f as a subtest once per implementation.
func forEachImpl(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	for _, avx := range impls() {
		t.Run(implName(avx), func(t *testing.T) {
			withImpl(avx, func() { f(t) })
		})
	}
}

// requireGVisor checks Checksum against gVisor's for one input.
func requireGVisor(t *testing.T, buf []byte, initial uint16) {
	t.Helper()
	want := checksum.Checksum(buf, initial)
	if got := Checksum(buf, initial); got != want {
		t.Fatalf("Checksum(len=%d, addr%%32=%d, initial=%#04x) = %#04x, gVisor %#04x",
			len(buf), sliceAddr(buf)%32, initial, got, want)
	}
}

func TestSelectedImplementation(t *testing.T) {
	require.Equal(t, hasAVX2, useAVX2, "AVX2 kernel must be selected exactly when the CPU has AVX2")
}

func TestChecksumTable(t *testing.T) {
	// RFC 791 example header (checksum field zeroed); its checksum is 0xb861.
	ipv4 := []byte{
		0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11,
		0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
	}
	tests := []struct {
		name    string
		buf     []byte
		initial uint16
		want    uint16
	}{
		{"empty", nil, 0, 0},
		{"empty initial", nil, 0x1234, 0x1234},
		{"one byte is the high byte", []byte{0xab}, 0, 0xab00},
		{"odd tail", []byte{0x12, 0x34, 0x56}, 0, 0x6834},
		{"rfc1071 example", []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}, 0, 0xddf2},
		{"end-around carry", []byte{0x00, 0x01}, 0xffff, 0x0001},
		{"ones stay ones", []byte{0xff, 0xff}, 0, 0xffff},
		{"zeros stay zero", make([]byte, 4096), 0, 0},
		{"zeros keep initial", make([]byte, 4096), 0xffff, 0xffff},
		{"ipv4 header", ipv4, 0, ^uint16(0xb861)},
		// 128 copies multiply the sum by 2^7, a 7-bit rotation mod 0xffff:
		// 0x479e rotated left by 7 is 0xcf23.
		{"ipv4 header 128 times", bytes.Repeat(ipv4, 128), 0, 0xcf23},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			forEachImpl(t, func(t *testing.T) {
				require.Equal(t, tt.want, Checksum(tt.buf, tt.initial))
				require.Equal(t, checksum.Checksum(tt.buf, tt.initial), Checksum(tt.buf, tt.initial))
			})
		})
	}
}

// TestChecksumRandom covers every tail length and scalar/vector boundary up
// to a jumbo-ish 2100 bytes, at every alignment within a word.
func TestChecksumRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	backing := make([]byte, 2100+8)
	for i := range backing {
		backing[i] = byte(rng.Uint32())
	}
	forEachImpl(t, func(t *testing.T) {
		for n := 0; n <= 2100; n++ {
			for off := 0; off < 8; off++ {
				requireGVisor(t, backing[off:off+n], uint16(rng.Uint32()))
			}
		}
	})
}

// TestChecksumAllOnes is the worst case for carries: every word and every
// vector lane add is at its maximum.
func TestChecksumAllOnes(t *testing.T) {
	ones := bytes.Repeat([]byte{0xff}, 5<<20+131)
	lengths := []int{0, 1, 2, 31, 32, 63, 64, 127, 128, 129, 255, 256, 1448, 1449, 9000, 65536, 1<<20 + 3, len(ones) - 1, len(ones)}
	forEachImpl(t, func(t *testing.T) {
		for _, n := range lengths {
			for _, off := range []int{0, 1} {
				if off+n > len(ones) {
					continue
				}
				for _, initial := range []uint16{0, 1, 0xfffe, 0xffff} {
					requireGVisor(t, ones[off:off+n], initial)
				}
			}
		}
	})
}

func TestChecksumLarge(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	backing := make([]byte, 5<<20+16)
	for i := range backing {
		backing[i] = byte(rng.Uint32())
	}
	lengths := []int{64 << 10, 64<<10 + 1, 1<<20 + 3, 5 << 20}
	forEachImpl(t, func(t *testing.T) {
		for _, n := range lengths {
			for _, off := range []int{0, 3, 7} {
				requireGVisor(t, backing[off:off+n], uint16(rng.Uint32()))
			}
		}
	})
}

// TestChecksumSplit checks that sums over pieces combine as gVisor's do,
// which is how callers chain headers and payloads.
func TestChecksumSplit(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	buf := make([]byte, 3000)
	for i := range buf {
		buf[i] = byte(rng.Uint32())
	}
	forEachImpl(t, func(t *testing.T) {
		for split := 0; split <= len(buf); split += 2 {
			require.Equal(t, checksum.Checksum(buf, 0), Checksum(buf[split:], Checksum(buf[:split], 0)), "split %d", split)
		}
	})
}

func FuzzChecksum(f *testing.F) {
	f.Add([]byte{}, uint16(0), uint8(0))
	f.Add([]byte{0xab}, uint16(0xffff), uint8(1))
	f.Add(bytes.Repeat([]byte{0xff}, 200), uint16(0xffff), uint8(3))
	f.Add(bytes.Repeat([]byte{0x5a, 0xa5, 0x00}, 700), uint16(0x1234), uint8(7))
	f.Fuzz(func(t *testing.T, data []byte, initial uint16, off uint8) {
		// Shift the data to an arbitrary alignment inside a larger slice.
		o := int(off % 64)
		buf := make([]byte, o+len(data))[o:]
		copy(buf, data)
		want := checksum.Checksum(buf, initial)
		for _, avx := range impls() {
			withImpl(avx, func() {
				if got := Checksum(buf, initial); got != want {
					t.Fatalf("%s: Checksum(len=%d, off=%d, initial=%#04x) = %#04x, gVisor %#04x",
						implName(avx), len(buf), o, initial, got, want)
				}
			})
		}
	})
}

var sink uint16

func BenchmarkChecksum(b *testing.B) {
	for _, n := range []int{20, 40, 1448, 9000, 65536} {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(i*7 + 3)
		}
		for _, impl := range []struct {
			name string
			fn   func([]byte, uint16) uint16
		}{
			{"csum", Checksum},
			{"gvisor", checksum.Checksum},
		} {
			b.Run(fmt.Sprintf("%d/%s", n, impl.name), func(b *testing.B) {
				b.SetBytes(int64(n))
				var s uint16
				for b.Loop() {
					s = impl.fn(buf, s)
				}
				sink = s
			})
		}
	}
}

// TestConcat: the sums of the parts of a range, split anywhere, concatenate
// to gVisor's sum of the whole.
func TestConcat(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 2, 3, 17, 1448, 3001} {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		want := checksum.Checksum(b, 0)
		for cut := 0; cut <= n; cut++ {
			got := Concat(Checksum(b[:cut], 0), Checksum(b[cut:], 0), cut)
			require.Equal(t, want, got, "%d bytes cut at %d", n, cut)
		}
	}
}
