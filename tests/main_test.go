// Package tests holds netlro's end-to-end tests: TCP transfers between two
// netstacks over an impairing link, and a real Linux kernel TCP sender and
// iperf3 client in network namespaces the tests create.
package tests

import (
	"os"
	"testing"

	"gvisor.dev/gvisor/pkg/refs"
)

func TestMain(m *testing.M) {
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// testPid is this test process's pid, to name what the tests create.
func testPid() int { return os.Getpid() }
