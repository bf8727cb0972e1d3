//go:build !(amd64 || arm64) || netlro_portablegoid

package lro

import (
	"runtime"
	"sync"
)

// stackBufs holds the buffers goroutineID reads a stack trace header into:
// runtime.Stack's buffer escapes, and a pooled one keeps the per-packet
// path free of allocations.
var stackBufs = sync.Pool{New: func() any { return new([64]byte) }}

// goroutineID returns the calling goroutine's ID, read from the first line
// of its stack trace ("goroutine 42 [running]:"). gVisor's goid reads it
// directly only on amd64 and arm64; this works wherever Go runs, more
// slowly, and is tested on amd64 with the netlro_portablegoid build tag.
func goroutineID() int64 {
	buf := stackBufs.Get().(*[64]byte)
	defer stackBufs.Put(buf)
	b := buf[:runtime.Stack(buf[:], false)]
	const prefix = "goroutine "
	if len(b) <= len(prefix) || string(b[:len(prefix)]) != prefix {
		panic("lro: unexpected stack trace header")
	}
	var id int64
	for _, c := range b[len(prefix):] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + int64(c-'0')
	}
	if id <= 0 {
		panic("lro: no goroutine ID in the stack trace header")
	}
	return id
}
