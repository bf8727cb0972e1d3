package lro

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/csum"
	"github.com/netlro/netlro/rxbatch"
)

// packetRef is the packet the engine is deciding about. It arrives as a
// caller's PacketBuffer (DeliverNetworkPacket), a frame's views
// (DeliverFragments) or a caller's bytes (DeliverBytes), and it is read
// one way whichever it is: from the network header on it is size bytes,
// of which head are contiguous in memory, and all of them, after a link
// header of linkLen bytes, lie in views from base on. The caller's bytes
// have no views and no link header: they are all head.
//
// Parsing and checksums read only that. Who owns the bytes, and so what
// passing, holding or merging the packet does with them, is src; only the
// methods at the end of this file look at it.
type packetRef struct {
	// head is found once, when the packet arrives: parsing pulls up three
	// or more times per packet, and a link endpoint reads a frame into
	// one view, so its headers are nearly always there.
	head      []byte
	size      int
	views     buffer.ViewList
	base      int
	linkLen   int
	validated bool // the lower endpoint verified its checksums
	src       packetSource
}

// packetSource is who owns a packetRef's bytes: the caller's PacketBuffer
// (pkt set), the caller's bytes (bytes set), or else a frame (buf).
type packetSource struct {
	// pkt is the caller's PacketBuffer, lent for the call: passed up as
	// it is, or held with a reference of the engine's own.
	pkt *stack.PacketBuffer
	// buf is a frame's views, the engine's until they move into a packet.
	// It is held by value: a pointer would share pkt's escape and move
	// every frame's Buffer to the heap.
	buf buffer.Buffer
	// bytes: head is the caller's, read during the call and copied from,
	// never kept.
	bytes bool
}

// packetOf reads the caller's PacketBuffer. Inbound, all it has consumed
// is its link header, and it pushed nothing.
func packetOf(pkt *stack.PacketBuffer) packetRef {
	r := packetRef{size: pkt.Data().Size(), validated: pkt.RXChecksumValidated, src: packetSource{pkt: pkt}}
	r.readViews()
	return r
}

// frameOf reads a frame whose network header is at linkHeaderLen.
func frameOf(buf buffer.Buffer, linkHeaderLen int) packetRef {
	r := packetRef{size: int(buf.Size()) - linkHeaderLen, src: packetSource{buf: buf}}
	r.base, r.linkLen = linkHeaderLen, linkHeaderLen
	r.readViews()
	return r
}

// bytesOf reads the caller's packet b, from the network header on.
func bytesOf(b []byte) packetRef {
	return packetRef{head: b, size: len(b), src: packetSource{bytes: true}}
}

// readViews finds r's views and its head in them, when it arrives and
// again after joining views has replaced them.
func (r *packetRef) readViews() {
	if pkt := r.src.pkt; pkt != nil {
		var off int
		r.views, off = pkt.AsViewList()
		r.linkLen = pkt.HeaderSize()
		r.base = off + r.linkLen
	} else {
		r.views = r.src.buf.AsViewList()
	}
	r.head = nil
	off := r.base
	for v := r.views.Front(); v != nil; v = v.Next() {
		if off < v.Size() {
			r.head = v.AsSlice()[off:]
			return
		}
		off -= v.Size()
	}
}

// pullUp returns the first n bytes from the network header on, contiguous,
// for reading.
func (r *packetRef) pullUp(n int) ([]byte, bool) {
	if n >= 0 && n <= len(r.head) {
		return r.head[:n], true
	}
	if n < 0 || n > r.size || r.src.bytes {
		return nil, false
	}
	return r.join(n)
}

// join makes the first n bytes from the network header on contiguous, for
// a header that spans views. Joining releases the views it joins, so r's
// views and head are read again.
func (r *packetRef) join(n int) ([]byte, bool) {
	var b []byte
	var ok bool
	if pkt := r.src.pkt; pkt != nil {
		b, ok = pkt.Data().PullUp(n)
	} else {
		var v buffer.View
		v, ok = r.src.buf.PullUp(r.base, n)
		b = v.AsSlice()
	}
	r.readViews()
	return b, ok
}

// sum returns the RFC 1071 sum of the n bytes at off from the network
// header on.
func (r *packetRef) sum(off, n int) uint16 {
	if off+n <= len(r.head) {
		return csum.Checksum(r.head[off:off+n], 0)
	}
	return sumViews(r.views, r.base+off, n)
}

// copyTo copies into dst the bytes of the packet from off (past the
// network header) on, as many as fit.
func (r *packetRef) copyTo(dst []byte, off int) {
	n := copy(dst, r.head[min(off, len(r.head)):])
	if n < len(dst) {
		copyViews(r.views, r.base+off+n, dst[n:])
	}
}

// linkID returns the link identity of the packet: the Ethernet source
// address and, for an 802.1Q header, the VLAN ID; 0 without an Ethernet
// header. inet_lro keyed flows by addresses and ports only, so two VLANs
// carrying the same 4-tuple merged.
//
// It copies the bytes it needs rather than pulling the link header up:
// pulling up may join views, or copy a shared chunk, and release the view
// the parsed headers point into.
func (r *packetRef) linkID() uint64 {
	var raw [header.EthernetMinimumSize + 4]byte
	lh := raw[:copyViews(r.views, r.base-r.linkLen, raw[:min(r.linkLen, len(raw))])]
	if len(lh) < header.EthernetMinimumSize {
		return 0
	}
	var id uint64
	for _, b := range lh[6:12] {
		id = id<<8 | uint64(b)
	}
	const tpid8021Q = 0x8100
	if len(lh) >= header.EthernetMinimumSize+4 && binary.BigEndian.Uint16(lh[12:]) == tpid8021Q {
		id |= uint64(binary.BigEndian.Uint16(lh[14:])&0xfff) << 48
	}
	return id
}

// copyViews copies into dst the bytes of l from off on, as many as fit,
// and returns how many it copied. It walks the views as sumViews does.
func copyViews(l buffer.ViewList, off int, dst []byte) int {
	n := 0
	for v := l.Front(); v != nil && n < len(dst); v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		n += copy(dst[n:], b[off:])
		off = 0
	}
	return n
}

// What is done with the bytes, by who owns them.

// packet returns r as a PacketBuffer for netstack, and whether the engine
// owns its reference: the caller's PacketBuffer is lent; a frame's views
// move into a new packet; the caller's bytes are copied into one. verified
// says its checksums were verified, by the engine or below it.
func (r *packetRef) packet(proto tcpip.NetworkProtocolNumber, verified bool) (pkt *stack.PacketBuffer, owned bool) {
	switch {
	case r.src.pkt != nil:
		return r.src.pkt, false
	case r.src.bytes:
		return rxbatch.NewPacket(proto, 0, buffer.MakeWithData(r.head), verified), true
	}
	pkt = rxbatch.NewPacket(proto, r.base, r.src.buf, verified)
	r.src.buf = buffer.Buffer{} // the packet owns the views now
	return pkt, true
}

// keeps reports whether the engine may keep r's bytes past the call, as
// a held packet: the caller's bytes it may not.
func (r *packetRef) keeps() bool { return !r.src.bytes }

// keep returns r as a packet whose reference the engine owns, to hold.
// Its checksums were verified, or trusted, before it could be held.
func (r *packetRef) keep(proto tcpip.NetworkProtocolNumber) *stack.PacketBuffer {
	pkt, owned := r.packet(proto, true)
	if !owned {
		pkt.IncRef()
	}
	return pkt
}

// moveTo appends r's bytes from hdrLen (past the network header) on to
// pkt: views move, with no copy; the caller's bytes are copied into a
// pooled view.
func (r *packetRef) moveTo(pkt *stack.PacketBuffer, hdrLen int) {
	switch {
	case r.src.pkt != nil:
		// The headers are contiguous already, so Consume copies nothing.
		r.src.pkt.Data().Consume(hdrLen)
		pkt.Data().Merge(r.src.pkt.Data())
	case r.src.bytes:
		pkt.Data().AppendView(buffer.NewViewWithData(r.head[hdrLen:]))
	default:
		r.src.buf.TrimFront(int64(r.base + hdrLen))
		pkt.Data().MergeBuffer(&r.src.buf)
	}
}
