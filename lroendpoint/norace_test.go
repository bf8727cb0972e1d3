//go:build !race

package lroendpoint

const raceEnabled = false
