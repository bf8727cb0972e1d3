//go:build race

package framed

// raceEnabled is true when the race detector is on. sync.Pool then drops
// a share of what is put back on purpose, so pooled views are allocated
// anew and allocation counts mean nothing.
const raceEnabled = true
