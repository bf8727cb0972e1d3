package lro

import (
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
)

// after reports whether sequence number a is later than b, modulo 2^32
// (Linux's after() in include/net/tcp.h).
func after(a, b uint32) bool { return int32(b-a) < 0 }

// classify decides whether s may join f's session. Each refusal names its
// rule.
func (e *Engine) classify(f *session, s *segment) action {
	// Only the next in-order segment merges (inet_lro tcp_next_seq).
	// Anything else is a retransmission or a gap: TCP must see it alone.
	if s.seq != f.nextSeq {
		return actionPass
	}
	// Same header shape, TOS and TTL (tcp_gro_receive, inet_gro_receive).
	if s.tcpLen != f.tcpLen || s.tos != f.tos || s.ttl != f.ttl {
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
	if e.cfg.Resegmentable {
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
// that arrived, so everything but the sequence number is identical and no
// segment is larger than the first.
func classifyResegmentable(f *session, s *segment) (action, bool) {
	if s.ack != f.ack || s.window != f.window {
		return actionRestart, false
	}
	if s.ts && (s.tsVal != f.tsVal || s.tsEcr != f.tsEcr) {
		return actionRestart, false
	}
	if s.payload > f.mss {
		return actionRestart, false
	}
	return actionMerge, true
}

// start makes s the first segment of session f. pkt holding s is already
// in f.pkt.
func (e *Engine) start(f *session, s *segment) {
	f.hdr = s.hdr
	f.v6, f.ipLen, f.tcpLen = s.v6, s.ipLen, s.tcpLen
	f.segs, f.payload, f.mss, f.sum = 1, s.payload, s.payload, s.sum
	f.nextSeq = s.seq + uint32(s.payload)
	f.ack, f.window = s.ack, s.window
	f.psh = s.flags&header.TCPFlagPsh != 0
	f.ts, f.tsVal, f.tsEcr = s.ts, s.tsVal, s.tsEcr
	f.tos, f.ttl = s.tos, s.ttl
	// Never an IP packet over 65535 bytes (IPv4 total length, IPv6
	// payload length).
	f.maxPayload = 0xffff - s.tcpLen
	if !s.v6 {
		f.maxPayload -= s.ipLen
	}
	if e.cfg.MaxBytes > 0 {
		f.maxPayload = min(f.maxPayload, e.cfg.MaxBytes)
	}
}

// merge moves s's payload views onto f's held packet, without copying, and
// takes the newest ACK, window and timestamps (inet_lro lro_add_common).
func (e *Engine) merge(f *session, s *segment, r *packetRef) {
	hdrLen := s.ipLen + s.tcpLen
	if r.pkt != nil {
		// The headers are contiguous already, so Consume copies nothing.
		r.pkt.Data().Consume(hdrLen)
		f.pkt.Data().Merge(r.pkt.Data())
	} else {
		r.buf.TrimFront(int64(r.off + hdrLen))
		f.pkt.Data().MergeBuffer(&r.buf)
	}
	f.sum = csum.Concat(f.sum, s.sum, f.payload)
	f.segs++
	f.payload += s.payload
	f.nextSeq += uint32(s.payload)
	f.ack, f.window = s.ack, s.window
	f.psh = f.psh || s.flags&header.TCPFlagPsh != 0
	f.tsVal, f.tsEcr = s.tsVal, s.tsEcr
}

// done reports whether f can take no more segments: MaxSegments reached,
// or, under Resegmentable rules, a PSH or short segment ended the run as
// it ends a GRO packet.
func (e *Engine) done(f *session, s *segment) bool {
	if f.segs >= e.cfg.MaxSegments || e.closed.Load() {
		return true
	}
	return e.cfg.Resegmentable && (f.psh || s.payload < f.mss)
}

// finalize rewrites the held packet's headers for its merged length: IP
// lengths and checksum, the newest ACK, window and timestamps, PSH, and
// the TCP checksum from the kept payload sum. A one-segment packet is left
// byte for byte as it arrived.
func finalize(f *session) {
	if f.segs < 2 {
		return
	}
	if f.v6 {
		header.IPv6(f.hdr).SetPayloadLength(uint16(f.tcpLen + f.payload))
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
