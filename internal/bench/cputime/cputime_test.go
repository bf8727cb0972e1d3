package cputime

import (
	"crypto/sha256"
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestTotalGrows: work on this goroutine shows in the process's CPU time,
// which never goes back.
func TestTotalGrows(t *testing.T) {
	before := Total()
	buf := make([]byte, 1<<20)
	for i := 0; i < 10_000 && Total() == before; i++ {
		sha256.Sum256(buf)
	}
	after := Total()
	assert.Greater(t, after, before)
	u, s := Process()
	assert.GreaterOrEqual(t, u+s, after)
}
