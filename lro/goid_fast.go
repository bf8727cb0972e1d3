//go:build amd64 || arm64

package lro

import "gvisor.dev/gvisor/pkg/goid"

// goroutineID returns the calling goroutine's ID, as gVisor's lock
// checkers read it.
func goroutineID() int64 { return goid.Get() }
