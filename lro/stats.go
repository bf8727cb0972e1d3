package lro

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// Stats is a snapshot of an Engine's counters.
//
// PacketsIn = PacketsOut + SegmentsMerged + Dropped + packets still held.
type Stats struct {
	PacketsIn      uint64 // packets handed to the engine
	PacketsOut     uint64 // packets delivered to netstack
	SegmentsMerged uint64 // segments appended to a held packet
	MergedPackets  uint64 // delivered packets that carry two or more segments

	// Held packets delivered, by cause.
	FlushBatch    uint64 // Flush: the lower endpoint ended a batch
	FlushEvict    uint64 // the flow table was full
	FlushLimit    uint64 // MaxSegments or MaxBytes reached
	FlushOrder    uint64 // a packet of the flow that cannot merge arrived
	FlushMismatch uint64 // a segment whose headers differ started a new session
	FlushTimer    uint64 // FlushDelay passed with no batch end

	// Packets delivered unchanged, by reason.
	PassNotTCP      uint64 // not IPv4/IPv6 TCP
	PassFragment    uint64 // IPv4 or IPv6 fragment, atomic fragments included
	PassIPOptions   uint64 // IPv4 options; IPv6 extension headers that differ, route on, chain too long or are unknown
	PassTCPOptions  uint64 // TCP options other than NOP,NOP,timestamp
	PassTCPFlags    uint64 // no payload, SYN/FIN/RST/URG/ECE/CWR, no ACK, or CE mark
	PassPadding     uint64 // bytes past the IP length
	PassBadChecksum uint64 // IPv4 header or TCP checksum failed
	PassMalformed   uint64 // truncated or unparsable
	PassOutOfOrder  uint64 // not the next sequence number of the held session
	PassMergingOff  uint64 // would have been a merge candidate, but SetMerging turned merging off
	PassNotLocal    uint64 // for a destination netstack does not keep: it forwards or drops it

	// Dropped packets, only with ClaimChecksumOffload.
	DropBadChecksum  uint64 // a checksum failed
	DropUnverifiable uint64 // truncated, or an IP fragment of TCP or UDP
}

// Held returns the number of packets the engine held when the snapshot was
// taken.
func (s Stats) Held() uint64 {
	return s.PacketsIn - s.PacketsOut - s.SegmentsMerged - s.Dropped()
}

// Dropped returns the number of packets the engine dropped.
func (s Stats) Dropped() uint64 { return s.DropBadChecksum + s.DropUnverifiable }

// MergeRatio returns packets in per packet out, or 0 before any went out.
func (s Stats) MergeRatio() float64 {
	if s.PacketsOut == 0 {
		return 0
	}
	return float64(s.PacketsIn) / float64(s.PacketsOut)
}

// String formats the non-zero counters on a few lines, for logs and tools.
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "in %d out %d merged %d segments into %d packets (%.1f:1)",
		s.PacketsIn, s.PacketsOut, s.SegmentsMerged, s.MergedPackets, s.MergeRatio())
	line := func(title string, kv ...any) {
		var parts []string
		for i := 0; i < len(kv); i += 2 {
			if v := kv[i+1].(uint64); v != 0 {
				parts = append(parts, fmt.Sprintf("%s %d", kv[i], v))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(&b, "\n%s: %s", title, strings.Join(parts, ", "))
		}
	}
	line("flush", "batch", s.FlushBatch, "evict", s.FlushEvict, "limit", s.FlushLimit,
		"order", s.FlushOrder, "mismatch", s.FlushMismatch, "timer", s.FlushTimer)
	line("pass", "not-tcp", s.PassNotTCP, "fragment", s.PassFragment, "ip-options", s.PassIPOptions,
		"tcp-options", s.PassTCPOptions, "tcp-flags", s.PassTCPFlags, "padding", s.PassPadding,
		"bad-checksum", s.PassBadChecksum, "malformed", s.PassMalformed, "out-of-order", s.PassOutOfOrder,
		"merging-off", s.PassMergingOff, "not-local", s.PassNotLocal)
	line("drop", "bad-checksum", s.DropBadChecksum, "unverifiable", s.DropUnverifiable)
	return b.String()
}

// counter names one per-shard counter. The constants follow the order of
// Stats's fields, and so does Stats.pointers: TestStatsOrder holds the
// three together.
type counter uint8

const (
	cIn counter = iota // derived in Engine.Stats, never counted
	cOut
	cMerged // counted in shard.merged, under its lock
	cMergedPackets
	cFlushBatch
	cFlushEvict
	cFlushLimit
	cFlushOrder
	cFlushMismatch
	cFlushTimer
	cPassNotTCP
	cPassFragment
	cPassIPOptions
	cPassTCPOptions
	cPassTCPFlags
	cPassPadding
	cPassBadChecksum
	cPassMalformed
	cPassOutOfOrder
	cPassMergingOff
	cPassNotLocal
	cDropBadChecksum
	cDropUnverifiable
	numCounters
)

// counters are one shard's atomics, padded so that shards used by
// different goroutines do not share a cache line.
type counters struct {
	v [numCounters]atomic.Uint64
	_ [64]byte
}

func (c *counters) inc(n counter) { c.v[n].Add(1) }

// add adds o's counters to s.
func (s *Stats) add(o Stats) {
	dst, src := s.pointers(), o.pointers()
	for i := range dst {
		*dst[i] += *src[i]
	}
}

// pointers returns s's fields in counter order (TestStatsOrder).
func (s *Stats) pointers() [numCounters]*uint64 {
	return [numCounters]*uint64{
		&s.PacketsIn, &s.PacketsOut, &s.SegmentsMerged, &s.MergedPackets,
		&s.FlushBatch, &s.FlushEvict, &s.FlushLimit, &s.FlushOrder, &s.FlushMismatch, &s.FlushTimer,
		&s.PassNotTCP, &s.PassFragment, &s.PassIPOptions, &s.PassTCPOptions, &s.PassTCPFlags,
		&s.PassPadding, &s.PassBadChecksum, &s.PassMalformed, &s.PassOutOfOrder, &s.PassMergingOff,
		&s.PassNotLocal,
		&s.DropBadChecksum, &s.DropUnverifiable,
	}
}

// addTo adds c's values to s.
func (c *counters) addTo(s *Stats) {
	for i, f := range s.pointers() {
		*f += c.v[i].Load()
	}
}

// Stats returns a snapshot of the engine's counters.
func (e *Engine) Stats() Stats {
	s := e.own.Stats()
	for _, q := range e.subqueues() {
		s.add(q.Stats())
	}
	return s
}

// Stats returns a snapshot of the counters of q's table.
func (q *Queue) Stats() Stats {
	var s Stats
	held := 0
	for i := range q.shards {
		sh := &q.shards[i]
		sh.mu.Lock()
		held += sh.n + sh.q.onTheirWay()
		s.SegmentsMerged += sh.merged
		sh.mu.Unlock()
		sh.stats.addTo(&s)
	}
	// Every packet in is out, merged, dropped, or still with the engine;
	// counting it as it comes would cost an atomic add per packet.
	s.PacketsIn = s.PacketsOut + s.SegmentsMerged + s.Dropped() + uint64(held)
	return s
}
