package rxbatch_test

import (
	"flag"
	"os"
	"testing"

	"gvisor.dev/gvisor/pkg/refs"
)

func TestMain(m *testing.M) {
	flag.Parse()
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}
