package lro

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/rxbatch"
)

// Defaults for the zero Config.
const (
	DefaultMaxFlows    = 8                      // inet_lro drivers' usual max_desc
	DefaultMaxSegments = 64                     // inet_lro drivers' usual max_aggr
	DefaultFlushDelay  = 100 * time.Microsecond // about one netstack batch
)

// minFlowsPerShard is the smallest shard the default Config makes.
const minFlowsPerShard = 16

// ErrInvalidConfig is wrapped by the error New returns for a Config it
// cannot use.
var ErrInvalidConfig = errors.New("invalid config")

// Config tunes an Engine. The zero value is ready to use: 8 flows, 64
// segments and up to a 65535-byte IP packet per merged packet, inet_lro's
// merge rules, checksums verified by the engine and again by netstack.
type Config struct {
	// MaxFlows is the number of sessions held at once (inet_lro max_desc).
	// 0 means DefaultMaxFlows.
	MaxFlows int
	// MaxSegments is the number of segments merged into one packet
	// (inet_lro max_aggr). 0 means DefaultMaxSegments.
	MaxSegments int
	// MaxBytes is the most TCP payload in one merged packet. 0 means the
	// most that fits a 65535-byte IP packet. In both modes a merged packet
	// is never larger than 65535 bytes from the IP header on, IPv6
	// extension headers included: IPv4's total length, and for IPv6
	// Linux's legacy GRO limit, where the payload length field alone would
	// allow 40 bytes more.
	MaxBytes int
	// Resegmentable selects Linux GRO's rules as its selftest (gro.c)
	// states them: a merged packet splits back, GSO-style, into exactly the
	// segments that arrived. Segments merge when all their header fields
	// but the sequence number, lengths and checksums are equal (ACK,
	// window, options, flags but PSH, CWR and ECE included, the IPv6 flow
	// label), their IPv4 IDs are all equal or increase by one a segment,
	// and none is larger than the first; a PSH or shorter segment ends the
	// merge. A split needs the first segment's payload size and whether
	// the IDs were equal, as Linux's GSO does.
	//
	// False selects inet_lro's rules: the newest ACK, window and
	// timestamps win, PSH is aggregated, sizes and IPv4 IDs are not
	// compared, and a segment with ECE or CWR never merges.
	//
	// In both modes IPv6 segments with Hop-by-Hop, Routing or Destination
	// Options headers merge when those headers are byte-identical.
	Resegmentable bool
	// ClaimChecksumOffload makes the engine verify, on every packet it
	// hands up, what netstack skips when the link endpoint reports
	// stack.CapabilityRXChecksumOffload (the IPv4 header checksum, TCP and
	// UDP checksums), and drop what fails or cannot be verified. Set it
	// only when the endpoint above the engine reports that capability, as
	// lroendpoint does in this mode.
	ClaimChecksumOffload bool
	// FlushDelay bounds how long a packet is held when the lower endpoint
	// never calls Flush. One timer is armed per batch of holds, never one
	// per packet. 0 means DefaultFlushDelay; negative means never, for a
	// lower endpoint, or a program feeding its own batches, that ends
	// every batch with Flush.
	FlushDelay time.Duration
	// Shards is the number of independently locked parts of the flow
	// table, rounded up to a power of two. 0 means one per CPU where each
	// shard then holds at least 16 sessions, else one. Each shard holds
	// MaxFlows/Shards sessions.
	Shards int
	// Clock runs the flush timer. nil means the system clock.
	Clock tcpip.Clock

	// TrustChecksums says that every packet delivered to the engine has
	// correct checksums: verified below it, as by a link endpoint that
	// reports stack.CapabilityRXChecksumOffload, or authenticated, as a
	// VPN's decrypted packets are. The engine then merges without
	// verifying them. Without it, only a PacketBuffer flagged
	// RXChecksumValidated is trusted; a frame delivered as fragments
	// carries no such flag. lroendpoint sets it when its lower endpoint
	// reports stack.CapabilityRXChecksumOffload.
	TrustChecksums bool

	// local, when set, tells whether netstack keeps a packet addressed
	// to a destination (rxbatch.Locality of the dispatcher New was
	// given); a flow it would forward never starts a session.
	local rxbatch.Locality
}

// withDefaults returns c with zero fields set, or an error naming the bad
// field.
func (c Config) withDefaults() (Config, error) {
	for _, f := range []struct {
		name string
		v    int
	}{{"MaxFlows", c.MaxFlows}, {"MaxSegments", c.MaxSegments}, {"MaxBytes", c.MaxBytes}, {"Shards", c.Shards}} {
		if f.v < 0 {
			return c, fmt.Errorf("lro: %s %d < 0: %w", f.name, f.v, ErrInvalidConfig)
		}
	}
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxSegments == 0 {
		c.MaxSegments = DefaultMaxSegments
	}
	if c.FlushDelay == 0 {
		c.FlushDelay = DefaultFlushDelay
	}
	if c.Shards == 0 {
		// One shard per CPU, but only where each can hold enough
		// sessions: flows hash unevenly, and a small shard thrashes.
		c.Shards = max(1, min(runtime.GOMAXPROCS(0), c.MaxFlows/minFlowsPerShard))
	}
	c.Shards = nextPow2(c.Shards)
	if c.Shards > c.MaxFlows {
		return c, fmt.Errorf("lro: Shards %d > MaxFlows %d: %w", c.Shards, c.MaxFlows, ErrInvalidConfig)
	}
	if c.Clock == nil {
		c.Clock = tcpip.NewStdClock()
	}
	return c, nil
}
