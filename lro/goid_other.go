//go:build !amd64 && !arm64

package lro

// goroutineID returns 0, "unknown": gVisor reads goroutine IDs only on
// amd64 and arm64. Here no goroutine ever waits on an engine, so a shard's
// queue is bounded only by the goroutines that deliver into it.
func goroutineID() int64 { return 0 }
