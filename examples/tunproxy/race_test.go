//go:build race

package main

// raceEnabled says that the tests, and the proxy they start (this test
// binary), run under the race detector, many times slower: the tests
// then move fewer bytes.
const raceEnabled = true
