package lro

import (
	"bytes"
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/csum"
)

// action is what a candidate segment does to its flow's session.
type action uint8

const (
	// actionMerge: append the segment to the held packet.
	actionMerge action = iota
	// actionPass: flush the held packet, then deliver the segment as it is.
	actionPass
	// actionRestart: flush the held packet; the segment starts a new one.
	actionRestart
	// actionRestartLimit: as actionRestart, because the packet is full.
	actionRestartLimit
	// actionStart: the flow has no session; the segment starts one.
	actionStart
)

// flushCause is the counter of a held packet that a restart ends.
func (a action) flushCause() counter {
	if a == actionRestartLimit {
		return cFlushLimit
	}
	return cFlushMismatch
}

// after reports whether sequence number a is later than b, modulo 2^32
// (Linux's after() in include/net/tcp.h).
func after(a, b uint32) bool { return int32(b-a) < 0 }

// classify decides whether s may join f's session. Each refusal names its
// rule.
func (q *Queue) classify(f *session, s *segment) action {
	// Only the next in-order segment merges (inet_lro tcp_next_seq).
	// Anything else is a retransmission or a gap: TCP must see it alone.
	if s.seq != f.nextSeq {
		return actionPass
	}
	// Same header shape, TOS and TTL (tcp_gro_receive, inet_gro_receive),
	// and the same IPv6 extension headers.
	if s.ipLen != f.ipLen || s.tcpLen != f.tcpLen || s.tos != f.tos || s.ttl != f.ttl || !sameExtensions(f, s) {
		return actionRestart
	}
	// An older TSval would hide PAWS from TCP (lro_tcp_ip_check: after()).
	if f.ts && after(f.tsVal, s.tsVal) {
		return actionRestart
	}
	// An older ACK would be lost under the newer one.
	if after(f.ack, s.ack) {
		return actionRestart
	}
	if q.cfg.Resegmentable {
		if action, ok := classifyResegmentable(f, s); !ok {
			return action
		}
	}
	if f.payload+s.payload > f.maxPayload {
		return actionRestartLimit
	}
	return actionMerge
}

// classifyResegmentable applies Linux GRO's stricter rules
// (tcp_gro_receive): the merged packet must split back into the segments
// that arrived, so everything a split copies from the first segment's
// headers is identical and no segment is larger than the first.
func classifyResegmentable(f *session, s *segment) (action, bool) {
	if s.ack != f.ack || s.window != f.window {
		return actionRestart, false
	}
	if s.ts && (s.tsVal != f.tsVal || s.tsEcr != f.tsEcr) {
		return actionRestart, false
	}
	// The flags but PSH, the reserved bits (AccECN's AE among them) and
	// the urgent pointer. Current Linux compares CWR as it compares ECE:
	// a merge ends where it changes, and segments that all carry it merge
	// (tcp_gro_receive since "gro: flushing when CWR is set negatively
	// affects AccECN"; gro.c flags_cwr).
	ft, st := f.hdr[f.ipLen:], s.hdr[s.ipLen:]
	if ft[12] != st[12] || (ft[13]^st[13])&^uint8(header.TCPFlagPsh) != 0 || ft[18] != st[18] || ft[19] != st[19] {
		return actionRestart, false
	}
	if !s.v6 && !ipv4IDFollows(f, s) {
		return actionRestart, false
	}
	// The flow label; Linux keeps segments with different labels apart
	// (ipv6_gro_receive).
	if s.v6 && (f.hdr[1]&0xf != s.hdr[1]&0xf || f.hdr[2] != s.hdr[2] || f.hdr[3] != s.hdr[3]) {
		return actionRestart, false
	}
	if s.payload > f.mss {
		return actionRestart, false
	}
	return actionMerge, true
}

// ipv4IDFollows applies Linux's IPv4 rule (inet_gro_flush in
// include/net/gro.h): the same flags (DF), and IDs that are all equal or
// increase by one a segment, decided at the second segment (ip_fixedid).
// A split gives each segment its ID back from the first segment's
// (SKB_GSO_TCP_FIXEDID or the increment). Since Linux dropped its DF
// checks here ("net: gro: remove unnecessary df checks"), equal IDs merge
// without DF too (gro.c ip_id_df0_fixed).
func ipv4IDFollows(f *session, s *segment) bool {
	const flagsMask = 0xe0 // reserved, DF, MF
	if (f.hdr[6]^s.hdr[6])&flagsMask != 0 {
		return false
	}
	off := binary.BigEndian.Uint16(s.hdr[4:]) - binary.BigEndian.Uint16(f.hdr[4:])
	switch {
	case f.segs == 1:
		return off <= 1
	case f.fixedID:
		return off == 0
	}
	return off == uint16(f.segs)
}

// sameExtensions reports whether s carries the IPv6 extension headers of
// f's first segment, byte for byte, as Linux's ipv6_gro_receive (memcmp)
// and gVisor's findGROPacket6 (bytes.Equal) require. s.ipLen == f.ipLen.
func sameExtensions(f *session, s *segment) bool {
	if !s.v6 || s.ipLen == header.IPv6MinimumSize {
		return true
	}
	return s.hdr[6] == f.hdr[6] && bytes.Equal(s.hdr[header.IPv6MinimumSize:s.ipLen], f.hdr[header.IPv6MinimumSize:f.ipLen])
}

// refusesECN reports whether s carries ECE or CWR under inet_lro's rules,
// which never merge either (lro_tcp_ip_check). Resegmentable mode merges
// segments that agree on both (classifyResegmentable).
func (q *Queue) refusesECN(s *segment) bool {
	return !q.cfg.Resegmentable && s.flags&(header.TCPFlagEce|header.TCPFlagCwr) != 0
}

// start makes s the first segment of session f. pkt holding s is already
// in f.pkt.
func (q *Queue) start(f *session, s *segment) {
	f.hdr = s.hdr
	f.v6, f.ipLen, f.tcpLen = s.v6, s.ipLen, s.tcpLen
	f.segs, f.payload, f.mss, f.sum = 1, s.payload, s.payload, s.sum
	f.nextSeq = s.seq + uint32(s.payload)
	f.ack, f.window = s.ack, s.window
	f.psh = s.flags&header.TCPFlagPsh != 0
	f.ts, f.tsVal, f.tsEcr = s.ts, s.tsVal, s.tsEcr
	f.tos, f.ttl = s.tos, s.ttl
	f.fixedID = false
	// Never an IP packet over 65535 bytes, headers included, in either
	// mode: IPv4's total length, and for IPv6 Linux's legacy GRO limit
	// (GRO_LEGACY_MAX_SIZE; gro.c large_max, large_rem), which also keeps
	// a merged packet within a 65535-byte capture.
	f.maxPayload = 0xffff - s.ipLen - s.tcpLen
	if q.cfg.MaxBytes > 0 {
		f.maxPayload = min(f.maxPayload, q.cfg.MaxBytes)
	}
}

// merge appends s's payload to f's held packet and takes the newest ACK,
// window and timestamps (inet_lro lro_add_common).
func (q *Queue) merge(f *session, s *segment, r *packetRef) {
	if f.segs == 1 && !s.v6 {
		// The second segment decides whether the IDs stay fixed
		// (inet_gro_flush's ip_fixedid).
		f.fixedID = s.hdr[4] == f.hdr[4] && s.hdr[5] == f.hdr[5]
	}
	appendPayload(f, s, r)
	f.sum = csum.Concat(f.sum, s.sum, f.payload)
	f.segs++
	f.payload += s.payload
	f.nextSeq += uint32(s.payload)
	f.ack, f.window = s.ack, s.window
	f.psh = f.psh || s.flags&header.TCPFlagPsh != 0
	f.tsVal, f.tsEcr = s.tsVal, s.tsEcr
}

// appendPayload appends the payload of s, the packet r, to f's held
// packet: copied into its own views when the engine made it (bytes.go),
// else moved from r (packetRef.moveTo).
func appendPayload(f *session, s *segment, r *packetRef) {
	if f.grows {
		copyPayload(f, r, s.ipLen+s.tcpLen, s.payload)
		return
	}
	r.moveTo(f.pkt, s.ipLen+s.tcpLen)
}

// done reports whether f can take no more segments: MaxSegments reached,
// or, under Resegmentable rules, a PSH or short segment ended the run as
// it ends a GRO packet.
func (q *Queue) done(f *session, s *segment) bool {
	if f.segs >= q.cfg.MaxSegments || q.closed.Load() {
		return true
	}
	return q.cfg.Resegmentable && (f.psh || s.payload < f.mss)
}

// finalize rewrites the held packet's headers for its merged length: IP
// lengths and checksum, the newest ACK, window and timestamps, PSH, and
// the TCP checksum from the kept payload sum. A one-segment packet is left
// byte for byte as it arrived.
func finalize(f *session) {
	if f.grows {
		f.pkt.Data().CapLength(f.ipLen + f.tcpLen + f.payload)
		f.grows, f.room = false, nil
	}
	if f.segs < 2 {
		return
	}
	if f.v6 {
		header.IPv6(f.hdr).SetPayloadLength(uint16(f.ipLen - header.IPv6MinimumSize + f.tcpLen + f.payload))
	} else {
		header.IPv4(f.hdr).SetTotalLength(uint16(f.ipLen + f.tcpLen + f.payload))
	}
	tcp := header.TCP(f.hdr[f.ipLen:])
	tcp.SetAckNumber(f.ack)
	tcp.SetWindowSize(f.window)
	if f.psh {
		tcp.SetFlags(uint8(tcp.Flags() | header.TCPFlagPsh))
	}
	if f.ts {
		o := tcp[header.TCPMinimumSize:]
		binary.BigEndian.PutUint32(o[4:], f.tsVal)
		binary.BigEndian.PutUint32(o[8:], f.tsEcr)
	}
	setChecksums(f.hdr, f.v6, f.ipLen, f.tcpLen, f.payload, f.sum)
}
