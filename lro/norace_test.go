//go:build !race

package lro

const raceEnabled = false
