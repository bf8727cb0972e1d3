package framed

import (
	"io"

	"gvisor.dev/gvisor/pkg/buffer"
)

// minRead is the least free space worth a read into the current chunk;
// with less, the Reader moves on to a new chunk rather than make small
// reads.
const minRead = chunkSize / 4

// readStream makes one read into the chunk and delivers the frames it
// completed.
func (r *Reader) readStream() error {
	r.prepareChunk()
	n, err := r.read(r.view.AsSlice()[r.fill:])
	r.fill += n
	if ferr := r.deliverStream(); ferr != nil {
		return ferr
	}
	if err == io.EOF && (r.fill > r.pos || r.pending > 0) {
		at, got := r.frameStart()
		return &FrameError{Format: r.cfg.Format, Offset: at, Length: got,
			Msg: "stream ended inside a frame", Err: io.ErrUnexpectedEOF}
	}
	return err
}

// deliverStream delivers every whole frame in [pos, fill), and checks
// each length prefix as soon as it is whole.
func (r *Reader) deliverStream() error {
	plen := r.cfg.Format.prefixLen()
	for {
		at, n := r.pos, r.pending
		if n == 0 {
			if r.fill-r.pos < plen {
				return nil
			}
			n = r.cfg.Format.frameLen(r.view.AsSlice()[r.pos:])
			if err := r.checkLen(r.off+int64(r.pos), n); err != nil {
				return err
			}
			at += plen
		}
		if r.fill-at < n {
			return nil
		}
		r.deliver(at, n)
		r.pos, r.pending = at+n, 0
	}
}

// checkLen checks the length n of the frame at offset (a stream offset,
// or a datagram's index): a frame is not empty, and at most MaxFrame.
func (r *Reader) checkLen(offset int64, n int) error {
	msg := ""
	switch {
	case n == 0:
		msg = "zero length"
	case n > r.cfg.MaxFrame:
		msg = "longer than the largest frame"
	default:
		return nil
	}
	return &FrameError{Format: r.cfg.Format, Offset: offset, Length: n, Msg: msg}
}

// prepareChunk makes room for the next read: it reads on into the chunk
// while the frame in progress fits there and enough space is left, and
// otherwise moves that frame's first part to the front, without its
// length prefix once that is whole.
func (r *Reader) prepareChunk() {
	if r.view == nil {
		r.view = buffer.NewViewSize(chunkSize)
		return
	}
	if r.fits() {
		return
	}
	part := r.view.AsSlice()[r.pos:r.fill]
	r.off += int64(r.pos)
	if plen := r.cfg.Format.prefixLen(); r.pending == 0 && len(part) >= plen {
		// deliverStream checked this length.
		r.pending = r.cfg.Format.frameLen(part)
		part = part[plen:]
		r.off += int64(plen)
	}
	r.pos, r.fill = 0, copy(r.view.AsSlice(), part)
	if len(part) > 0 {
		r.stats.Moves++
	}
}

// fits reports whether the next read may go into the current chunk: the
// frame in progress (or the largest, if its length is not known yet) fits
// in it, and the free space is worth a read or a new chunk would not
// give more.
func (r *Reader) fits() bool {
	plen := r.cfg.Format.prefixLen()
	need := r.pending
	switch {
	case need > 0:
	case r.fill-r.pos >= plen:
		need = plen + r.cfg.Format.frameLen(r.view.AsSlice()[r.pos:])
	default:
		need = plen + r.cfg.MaxFrame
	}
	free := chunkSize - r.fill
	return r.pos+need <= chunkSize && free > 0 && (free >= minRead || r.pos == 0)
}

// frameStart returns the stream offset of the frame in progress, at its
// length prefix, and how many of its bytes, the prefix included, have
// arrived.
func (r *Reader) frameStart() (int64, int) {
	at, n := r.off+int64(r.pos), r.fill-r.pos
	if r.pending > 0 {
		plen := r.cfg.Format.prefixLen()
		at, n = at-int64(plen), n+plen
	}
	return at, n
}
