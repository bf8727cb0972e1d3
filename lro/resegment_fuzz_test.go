package lro

import (
	"bytes"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/internal/testpacket"
)

// fuzzSender is one flow of FuzzResegment's program: the header its next
// segment carries, and how its IPv4 IDs go on.
type fuzzSender struct {
	tmpl   testpacket.TCP
	idMode uint8 // 0 incrementing, 1 fixed, 2 scrambled
	ext    uint8 // which IPv6 extension headers, see fuzzExtensions
}

// fuzzExtensions are the IPv6 extension header chains a program picks
// from: none, two Destination Options headers that differ in one byte,
// and Hop-by-Hop with a Routing header that has no segments left.
var fuzzExtensions = [][]testpacket.IPv6Ext{
	nil,
	{{Type: testpacket.IPv6DestOptions, Body: []byte{0x1e, 4, 0, 0, 0, 0}}},
	{{Type: testpacket.IPv6DestOptions, Body: []byte{0x1e, 4, 0, 0, 0, 1}}},
	{{Type: testpacket.IPv6HopByHop, Body: []byte{5, 2, 0, 0, 1, 0}}, {Type: testpacket.IPv6Routing, Body: []byte{0, 0, 0, 0, 0, 0}}},
}

// fuzzEvent is a packet to deliver, or a Flush when pkt is nil.
type fuzzEvent struct{ pkt []byte }

// resegmentProgram turns prog into events: segments of an IPv4 and an
// IPv6 flow whose headers change as the program says, and flushes. Each
// step reads two bytes, op and arg: bit 0 of op picks the flow, bits 1-3
// what to do. A flipped byte falls in the headers, IPv6 extension headers
// among them, which no checksum covers.
func resegmentProgram(prog []byte) []fuzzEvent {
	if len(prog) == 0 {
		return nil
	}
	ts := prog[0]&1 != 0
	flows := [2]*fuzzSender{
		{tmpl: testpacket.TCP{TS: ts, DontFragment: true, Seq: 0xfffff000}},
		{tmpl: testpacket.TCP{V6: true, TS: !ts, Seq: 7}},
	}
	var ev []fuzzEvent
	for prog = prog[1:]; len(prog) >= 2 && len(ev) < 64; prog = prog[2:] {
		op, arg := prog[0], prog[1]
		fl := flows[op&1]
		s := &fl.tmpl
		switch (op >> 1) & 7 {
		case 0, 1, 2, 3, 4: // a data segment, mostly of one size
			n := 64
			if arg >= 160 {
				n = int(arg%97) + 1
			}
			seg := *s
			seg.Payload = testpacket.Payload(uint64(len(ev)), n)
			if op&0x10 != 0 {
				seg.Flags |= header.TCPFlagPsh
			}
			ev = append(ev, fuzzEvent{seg.Bytes()})
			s.Seq += uint32(n)
			switch fl.idMode {
			case 0:
				s.ID++
			case 2:
				s.ID = s.ID*31 + 7
			}
		case 5: // a header change for the segments that follow
			changeHeader(fl, arg)
		case 6: // a pure ACK, or a copy of the last packet with a byte flipped
			if arg&1 == 0 || len(ev) == 0 || ev[len(ev)-1].pkt == nil {
				ack := *s
				ev = append(ev, fuzzEvent{ack.Bytes()})
				continue
			}
			b := bytes.Clone(ev[len(ev)-1].pkt)
			b[int(arg>>1)%min(len(b), 80)] ^= 0x5a
			ev = append(ev, fuzzEvent{b})
		case 7: // a gap in sequence space, or a flush
			if arg&1 != 0 {
				ev = append(ev, fuzzEvent{})
				continue
			}
			s.Seq += uint32(arg)
		}
	}
	return ev
}

// changeHeader changes one field of fl's next segments, picked by arg.
func changeHeader(fl *fuzzSender, arg uint8) {
	s := &fl.tmpl
	if s.Flags == 0 {
		s.Flags = header.TCPFlagAck
	}
	switch arg % 8 {
	case 0:
		s.Ack++
	case 1:
		s.Window = 60000 + uint16(arg)
	case 2:
		s.TSVal++
	case 3:
		s.Flags ^= header.TCPFlagCwr
	case 4:
		s.Flags ^= header.TCPFlagEce
	case 5:
		fl.idMode = (fl.idMode + 1) % 3
	case 6:
		s.DontFragment = !s.DontFragment
		s.FlowLabel++
	case 7:
		fl.ext = (fl.ext + 1) % uint8(len(fuzzExtensions))
		if s.V6 {
			s.IPv6Ext = fuzzExtensions[fl.ext]
		}
	}
}

// FuzzResegment runs a program of segments of two flows whose headers
// change as the input says (sizes, PSH, CWR, ECE, ACK, window,
// timestamps, IPv4 IDs and DF, the IPv6 flow label and extension
// headers, gaps, flushes) through an engine in each mode. In
// Resegmentable mode every merge must split back into exactly the
// segments that arrived (checkResegmentable). In the default mode every
// packet out is an arrival or a merge with valid headers and checksums,
// and per flow the payload bytes out are the bytes in, in order.
func FuzzResegment(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 1, 0, 14, 1})
	f.Add([]byte{1, 0, 0, 0, 0, 10, 3, 0, 0, 0, 0, 10, 3, 0, 0})
	f.Add([]byte{0, 1, 0, 1, 0, 11, 7, 1, 0, 1, 0, 11, 7, 1, 0, 1, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 10, 5, 0, 0, 0, 0, 10, 5, 0, 0, 0, 0, 0, 200, 0, 0})
	f.Add(bytes.Repeat([]byte{0, 0, 1, 0, 10, 0, 11, 1}, 12))
	f.Fuzz(func(t *testing.T, prog []byte) {
		ev := resegmentProgram(prog)
		var in [][]byte
		for _, e := range ev {
			if e.pkt != nil {
				in = append(in, e.pkt)
			}
		}
		for _, reseg := range []bool{true, false} {
			rec := &recorder{}
			e := newEngine(t, rec, Config{Resegmentable: reseg, MaxSegments: 8, Shards: 1})
			for i, x := range ev {
				if x.pkt == nil {
					e.Flush()
					continue
				}
				feed(e, path(i%2), x.pkt)
			}
			e.Flush()
			out := packetsOf(rec.take())
			if reseg {
				if err := checkResegmentable(in, out); err != nil {
					t.Fatalf("resegmentable: %v", err)
				}
				continue
			}
			seen := map[string]bool{}
			for _, b := range in {
				seen[string(b)] = true
			}
			for i, b := range out {
				if _, _, err := testpacket.Check(b); !seen[string(b)] && err != nil {
					t.Fatalf("default: packet %d out is neither an arrival nor valid: %v", i, err)
				}
			}
			if want, got := validStreams(in), validStreams(out); !equalStreams(want, got) {
				t.Fatalf("default: payload streams differ:\nin  %v\nout %v", summarize(want), summarize(got))
			}
		}
	})
}
