package fdbased

import (
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
)

// rxBufs are what one batch is read into: a pooled view per frame and,
// with vnet, a virtio_net_hdr and a spare view per frame, with the message
// headers and iovecs that point at them. Like gVisor's recvMMsgDispatcher
// it allocates the headers and iovecs once and, after each batch, replaces
// only the views that were handed off, so a steady stream costs no
// allocation but the pooled views themselves.
type rxBufs struct {
	// size is the length of every view in views, set by refill.
	size int
	// views holds one view per frame of a batch; nil where the frame's
	// view was handed off. msgs[k] points at its iovecs,
	// iovs[k*iovsPerMsg():].
	views []*buffer.View
	iovs  []unix.Iovec
	// vnet (Options.VNetHdr): each message reads a virtio_net_hdr into
	// hdrs[k], then the frame into views[k] and, past its end (a TCP
	// super-packet), into spares[k], of spareSize bytes (about 64 KiB: a
	// batch's spares hold 4 MiB of pooled chunks at the default
	// BatchSize). A spare is replaced only when a frame reached it.
	vnet      bool
	hdrs      [][vnetHdrSize]byte
	spares    []*buffer.View
	spareSize int
	// msgs are the message headers, which recvmmsg fills in; the other
	// sources set Len and clear Msg.Flags (setLen, put), so that every
	// frame reads alike.
	msgs []rawfile.MMsgHdr
}

// newRxBufs returns buffers for batch frames, without their views, which
// refill adds.
func newRxBufs(batch int, vnet bool) rxBufs {
	b := rxBufs{
		views: make([]*buffer.View, batch),
		vnet:  vnet,
		msgs:  make([]rawfile.MMsgHdr, batch),
	}
	per := b.iovsPerMsg()
	b.iovs = make([]unix.Iovec, batch*per)
	for k := range b.msgs {
		b.msgs[k].Msg.Iov = &b.iovs[k*per]
		b.msgs[k].Msg.SetIovlen(per)
	}
	if vnet {
		b.hdrs = make([][vnetHdrSize]byte, batch)
		b.spares = make([]*buffer.View, batch)
		for k := range b.hdrs {
			b.iovs[k*per].Base = &b.hdrs[k][0]
			b.iovs[k*per].SetLen(vnetHdrSize)
		}
	}
	return b
}

// iovsPerMsg is the number of iovecs each message reads into: the view,
// or with vnet the header, the view and the spare.
func (b *rxBufs) iovsPerMsg() int {
	if b.vnet {
		return 3
	}
	return 1
}

// frame returns the length of message k's frame as read, and whether the
// kernel cut it short.
func (b *rxBufs) frame(k int) (length int, truncated bool) {
	return int(b.msgs[k].Len), b.msgs[k].Msg.Flags&unix.MSG_TRUNC != 0
}

// setLen records that n bytes were read into message k.
func (b *rxBufs) setLen(k, n int) {
	b.msgs[k].Len = uint32(n)
	b.msgs[k].Msg.Flags = 0
}

// put copies frame into message k's view, as much as fits, and records its
// whole length, and whether it may be cut short.
func (b *rxBufs) put(k int, frame []byte, truncated bool) {
	copy(b.views[k].AsSlice(), frame)
	b.setLen(k, len(frame))
	if truncated {
		b.msgs[k].Msg.Flags = unix.MSG_TRUNC
	}
}

// deliver hands message k's frame, of length bytes as frame reported
// (truncated if the kernel cut it short), to bt, and forgets the views bt
// took, which refill replaces.
func (b *rxBufs) deliver(k, length int, truncated bool, bt *batch) {
	if !b.vnet {
		if bt.deliver(b.views[k], length, truncated) {
			b.views[k] = nil
		}
		return
	}
	hdr := b.hdrs[k][:min(length, vnetHdrSize)]
	tookV, tookSpare := bt.deliverVNet(hdr, b.views[k], b.spares[k], length-len(hdr), truncated)
	if tookV {
		b.views[k] = nil
	}
	if tookSpare {
		b.spares[k] = nil
	}
}

// refill gives every message of the next read a view of size bytes, and
// with vnet a spare for the rest of a super-packet of hdrSize bytes of
// link header: it replaces the views the last batch handed off, and all
// of them if size changed (with the MTU).
func (b *rxBufs) refill(size, hdrSize int) {
	if size != b.size {
		b.free()
		b.size = size
		// A super-packet's bytes past the first view; at least one byte,
		// so that a frame that fills the view and spills is known as one.
		b.spareSize = max(1, maxGSOFrame(hdrSize)+1-size)
	}
	// views[k]'s iovec in message k: after the header's with vnet, and a
	// spare's follows it.
	per, at := b.iovsPerMsg(), 0
	if b.vnet {
		at = 1
	}
	for k, v := range b.views {
		if v == nil {
			v = buffer.NewViewSize(b.size)
			b.views[k] = v
			b.iovs[k*per+at].Base = &v.AsSlice()[0]
			b.iovs[k*per+at].SetLen(b.size)
		}
		if b.vnet && b.spares[k] == nil {
			sp := buffer.NewViewSize(b.spareSize)
			b.spares[k] = sp
			b.iovs[k*per+at+1].Base = &sp.AsSlice()[0]
			b.iovs[k*per+at+1].SetLen(b.spareSize)
		}
	}
}

// free returns every view to the pool.
func (b *rxBufs) free() {
	for _, views := range [][]*buffer.View{b.views, b.spares} {
		for k, v := range views {
			if v != nil {
				v.Release()
				views[k] = nil
			}
		}
	}
	b.size = 0
}
