package lro

import (
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/rxbatch"
)

// The held packets of the bytes path (DeliverBytes). The caller's buffer
// cannot be kept, so what the engine holds is copied, once: the headers
// into a small view of their own, the payload of each segment that
// merges into the held packet's payload views, which the engine grows
// itself. Each payload view is taken whole from gVisor's chunk pool (a
// power of two, so the buffer never fills one view from the next) and
// grown to its full size at once; the packet is cut to its length when it
// is delivered (finalize).
//
// The views double in size, from minRoom on: a merged packet of 64 KiB
// has at most five payload views, where the views' path has one per
// segment, and a packet never pins more than about twice its payload in
// pooled memory, which matters because netstack keeps received data until
// the application reads it: one 64 KiB chunk per session would pin 64 KiB
// for every lone segment.
//
// The headers have a view of their own because netstack keeps a reference
// to the network header's view while it handles a packet, and each
// header read then copies the whole chunk that view shares
// (buffer.Buffer.PullUp of a shared chunk): a header chunk is a few dozen
// bytes, a payload chunk up to 64 KiB.

// minRoom is the size of a held packet's first payload view: room for
// about three MTU-sized segments.
const minRoom = 4096

// holdCopy makes r, the caller's packet of hdrLen bytes of headers and
// payload bytes of payload, the held packet of f. Its checksums were
// verified, or trusted, before it could be held.
func holdCopy(f *session, proto tcpip.NetworkProtocolNumber, r *packetRef, hdrLen, payload int) {
	buf := buffer.MakeWithView(buffer.NewViewWithData(r.head[:hdrLen]))
	f.pkt = rxbatch.NewPacket(proto, 0, buf, true)
	f.grows = true
	copyPayload(f, r, hdrLen, payload)
}

// copyPayload copies the n bytes of r from off on to the end of f's held
// packet, taking a new view whenever the last one is full.
func copyPayload(f *session, r *packetRef, off, n int) {
	for n > 0 {
		if len(f.room) == 0 {
			growRoom(f)
		}
		k := min(n, len(f.room))
		r.copyTo(f.room[:k], off)
		f.room = f.room[k:]
		off += k
		n -= k
	}
}

// growRoom appends to f's held packet a payload view twice the size of
// the last one, grown to its full size, and makes it f's room.
func growRoom(f *session) {
	size := min(max(minRoom, 2*f.lastView), buffer.MaxChunkSize)
	v := buffer.NewViewSize(size)
	f.room, f.lastView = v.AsSlice(), size
	b := buffer.MakeWithView(v)
	f.pkt.Data().MergeBuffer(&b) // moves the view: no copy
}
