package lro

import (
	"flag"
	"os"
	"testing"

	"gvisor.dev/gvisor/pkg/refs"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The leak checker tracks every object in a map: on for tests, off
	// when only benchmarks run, where it would swamp the figures.
	check := flag.Lookup("test.run").Value.String() != "NONE"
	if check {
		refs.SetLeakMode(refs.LeaksPanic)
	}
	code := m.Run()
	if check {
		refs.DoLeakCheck()
	}
	os.Exit(code)
}
