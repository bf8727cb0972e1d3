package lro

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
)

// fuzzFlow is one sender of the fuzz program.
type fuzzFlow struct {
	tmpl testpacket.TCP
	seq  uint32
	ts   uint32
}

// FuzzEngine runs a program read from the input: in-order segments of a
// few flows with random sizes and flags, corrupted copies of earlier
// packets, raw bytes, and flushes, by every delivery path in turn (the
// bytes path with the caller's buffer overwritten after each call). It
// checks that
// nothing panics, that per flow the valid payload bytes out equal the valid
// payload bytes in, in order, that every packet out is either one that
// went in or a merged packet with valid headers and checksums, and that
// nothing stays held.
func FuzzEngine(f *testing.F) {
	f.Add([]byte{0, 200, 0, 200, 1, 100, 7, 2, 50})
	f.Add([]byte{0, 10, 0, 10, 5, 1, 30, 0, 10, 6, 8, 69, 0, 0, 20})
	f.Add([]byte{3, 255, 3, 255, 3, 255, 4, 0x18, 3, 1, 7, 3, 9})
	f.Add(bytes.Repeat([]byte{0, 64, 1, 64, 2, 64}, 30))
	f.Fuzz(func(t *testing.T, prog []byte) {
		cfg := Config{MaxFlows: 2, MaxSegments: 8, Shards: 1}
		if len(prog) > 0 && prog[0]&0x80 != 0 {
			cfg.Resegmentable = true
		}
		rec := &recorder{}
		e := newEngine(t, rec, cfg)
		flows := []*fuzzFlow{
			{tmpl: testpacket.TCP{SrcPort: 1}},
			{tmpl: testpacket.TCP{SrcPort: 2, V6: true, TS: true}},
			{tmpl: testpacket.TCP{SrcPort: 3, TS: true}},
		}
		var in [][]byte
		next := func() byte {
			if len(prog) == 0 {
				return 0
			}
			b := prog[0]
			prog = prog[1:]
			return b
		}
		for steps := 0; len(prog) > 0 && steps < 512; steps++ {
			op := next()
			var pkt []byte
			switch op % 8 {
			case 0, 1, 2, 3, 4:
				fl := flows[int(op%8)%len(flows)]
				s := fl.tmpl
				s.Seq, s.TSVal = fl.seq, fl.ts
				s.Payload = testpacket.Payload(uint64(len(in)), int(next())*6)
				if op&0x40 != 0 {
					s.Flags = header.TCPFlags(next()) | header.TCPFlagAck
				}
				if op&0x20 != 0 {
					fl.ts++
				}
				pkt = s.Bytes()
				fl.seq += uint32(len(s.Payload))
			case 5: // a corrupted copy of an earlier packet
				if len(in) == 0 {
					continue
				}
				pkt = bytes.Clone(in[int(next())%len(in)])
				if len(pkt) > 0 {
					pkt[int(next())%len(pkt)] ^= next() | 1
				}
			case 6: // raw bytes
				n := int(next())
				pkt = bytes.Clone(prog[:min(n, len(prog))])
				prog = prog[min(n, len(prog)):]
			case 7:
				e.Flush()
				continue
			}
			in = append(in, pkt)
			p := path(len(in) % len(paths))
			if p == viaPacket && len(pkt) == 0 {
				p = viaFragments // a PacketBuffer needs a byte
			}
			if op&0x10 != 0 && p != viaBytes {
				// With a link header, split into two views anywhere.
				feedSplit(e, p, pkt, int(next()))
			} else {
				feed(e, p, pkt)
			}
		}
		e.Flush()
		out := rec.take()

		seen := map[string]bool{}
		for _, b := range in {
			seen[string(b)] = true
		}
		for i, d := range out {
			if seen[string(d.data)] {
				continue
			}
			if _, _, err := testpacket.Check(d.data); err != nil {
				t.Fatalf("packet %d out is neither an input nor valid: %v", i, err)
			}
		}
		if want, got := validStreams(in), validStreams(packetsOf(out)); !equalStreams(want, got) {
			t.Fatalf("payload streams differ:\nin  %v\nout %v", summarize(want), summarize(got))
		}
		st := e.Stats()
		if st.PacketsIn != uint64(len(in)) || st.Held() != 0 {
			t.Fatalf("stats: %d in for %d packets, %d held", st.PacketsIn, len(in), st.Held())
		}
	})
}

func packetsOf(out []delivered) [][]byte {
	p := make([][]byte, len(out))
	for i, d := range out {
		p[i] = d.data
	}
	return p
}

// validStreams concatenates, per flow, the payloads of the packets that
// are valid whole TCP segments (not IPv4 fragments, which may legally pass
// their flow), in order.
func validStreams(pkts [][]byte) map[string][]byte {
	m := map[string][]byte{}
	for _, b := range pkts {
		tcp, p, err := testpacket.Check(b)
		if err != nil {
			continue
		}
		if b[0]>>4 == 4 && (header.IPv4(b).FragmentOffset() != 0 || header.IPv4(b).Flags()&header.IPv4FlagMoreFragments != 0) {
			continue
		}
		addrs := b[12:20]
		if b[0]>>4 == 6 {
			addrs = b[8:40]
		}
		key := fmt.Sprintf("%x/%d/%d", addrs, tcp.SourcePort(), tcp.DestinationPort())
		m[key] = append(m[key], p...)
	}
	return m
}

func equalStreams(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func summarize(m map[string][]byte) map[string]int {
	s := map[string]int{}
	for k, v := range m {
		s[k] = len(v)
	}
	return s
}

// feedSplit is feed, for the PacketBuffer and frame paths, of b behind an
// Ethernet header, in two views split at (at mod the frame's length): the
// engine reads a header wherever the views put it, and joins them only
// when a header spans two. The header's source address is zero, the link
// identity of a packet without one, so that its flow is the same whichever
// way a packet comes (a flow is keyed by its link source too).
func feedSplit(e target, p path, b []byte, at int) {
	frame := make([]byte, header.EthernetMinimumSize, header.EthernetMinimumSize+len(b))
	proto := testpacket.Proto(b)
	binary.BigEndian.PutUint16(frame[12:], uint16(proto))
	frame = append(frame, b...)
	at %= len(frame) + 1
	buf := buffer.MakeWithData(frame[:at])
	rest := buffer.MakeWithData(frame[at:])
	buf.Merge(&rest)
	if p == viaFragments {
		e.DeliverFragments(proto, header.EthernetMinimumSize, buf)
		return
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buf})
	defer pkt.DecRef()
	if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
		return
	}
	e.DeliverNetworkPacket(proto, pkt)
}
