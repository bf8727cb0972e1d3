package lro

// SetMerging turns merging off (false) or back on (true) while packets
// flow, so that an operator can compare both in production. While it is
// off, every packet goes to netstack one for one, checked as before (so
// ClaimChecksumOffload stays safe) and counted in Stats.PassMergingOff.
// A packet that arrives while it is off first delivers what its flow held
// from before the switch, as any packet that cannot merge does, so nothing
// is reordered; turning merging off also delivers every held packet, as
// Flush does, so that no flow waits for its next packet to see it out.
// It covers every queue of the engine, and may be called from any
// goroutine, concurrently with deliveries.
func (e *Engine) SetMerging(on bool) {
	if e.own.off.Swap(!on) != !on && !on {
		e.Flush()
	}
}

// Merging reports whether merging is on, as it is after New.
func (e *Engine) Merging() bool { return !e.own.off.Load() }
