//go:build (amd64 || arm64) && !netlro_portablegoid

package lro

import "gvisor.dev/gvisor/pkg/goid"

// goroutineID returns the calling goroutine's ID, as gVisor's lock
// checkers read it: from the runtime's goroutine structure, without a
// call into the runtime.
func goroutineID() int64 { return goid.Get() }
