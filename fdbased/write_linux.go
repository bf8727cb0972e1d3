//go:build linux

package fdbased

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// writer holds the message headers and iovecs of WritePackets, grown to
// the largest batch seen and reused, so that writing allocates nothing in
// steady state.
type writer struct {
	mu   sync.Mutex
	msgs []rawfile.MMsgHdr // guarded by mu
	iovs []unix.Iovec      // guarded by mu
	// hdrs are the frames' virtio_net_hdrs when vnet is set, one per
	// message, grown with msgs. Guarded by mu.
	hdrs    [][vnetHdrSize]byte
	vnet    bool // each frame starts with a virtio_net_hdr
	linkHdr int  // link header length, where csum_start counts from
}

// WritePackets implements stack.LinkWriter.WritePackets. Packets go to
// the fd picked by their hash, as in gVisor's fdbased; runs of packets for
// one socket go out with sendmmsg, and packets for other fds with one
// writev each. A full fd fails with tcpip.ErrWouldBlock: the packets not
// yet written are dropped and counted in Stats.WriteErrors. It does not
// take the packets' references.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	ps := pkts.AsSlice()
	links := e.sys.links
	w := &e.sys.tx
	w.mu.Lock()
	defer w.mu.Unlock()
	sent := 0
	for sent < len(ps) {
		l := &links[ps[sent].Hash%uint32(len(links))]
		end := sent + 1
		for end < len(ps) && &links[ps[end].Hash%uint32(len(links))] == l {
			end++
		}
		var n int
		var err tcpip.Error
		if l.isSocket {
			n, err = w.sendBatch(l.fd, ps[sent:end])
		} else {
			n, err = w.writeEach(l.fd, ps[sent:end])
		}
		sent += n
		e.stats.written.Add(uint64(n))
		if err != nil {
			e.stats.writeErrors.Add(uint64(len(ps) - sent))
			return sent, err
		}
	}
	return sent, nil
}

// sendBatch writes ps to the socket fd with as few sendmmsg calls as the
// kernel allows, and returns how many it wrote.
//
// Precondition: w.mu is held.
func (w *writer) sendBatch(fd int, ps []*stack.PacketBuffer) (int, tcpip.Error) {
	sent := 0
	for sent < len(ps) {
		batch := ps[sent:min(len(ps), sent+maxBatchSize)]
		w.fillMsgs(batch)
		for done := 0; done < len(batch); {
			n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd),
				uintptr(unsafe.Pointer(&w.msgs[done])), uintptr(len(batch)-done), unix.MSG_DONTWAIT, 0, 0)
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 {
				return sent, tcpip.TranslateErrno(errno)
			}
			done += int(n)
			sent += int(n)
		}
	}
	return sent, nil
}

// fillMsgs points w.msgs[:len(ps)] at the bytes of ps.
//
// Precondition: w.mu is held.
func (w *writer) fillMsgs(ps []*stack.PacketBuffer) {
	if len(w.msgs) < len(ps) {
		w.msgs = make([]rawfile.MMsgHdr, len(ps))
	}
	w.growHdrs(len(ps))
	// First the iovecs, which may grow w.iovs; then the pointers to them.
	w.iovs = w.iovs[:0]
	for k, pkt := range ps {
		start := len(w.iovs)
		w.iovs = w.appendFrame(w.iovs, pkt, k)
		w.msgs[k] = rawfile.MMsgHdr{}
		w.msgs[k].Msg.SetIovlen(len(w.iovs) - start)
	}
	start := 0
	for k := range ps {
		w.msgs[k].Msg.Iov = &w.iovs[start]
		start += int(w.msgs[k].Msg.Iovlen)
	}
}

// writeEach writes ps to the non-socket fd, one writev per packet, and
// returns how many it wrote.
//
// Precondition: w.mu is held.
func (w *writer) writeEach(fd int, ps []*stack.PacketBuffer) (int, tcpip.Error) {
	w.growHdrs(1)
	for k, pkt := range ps {
		w.iovs = w.appendFrame(w.iovs[:0], pkt, 0)
		for {
			_, _, errno := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd),
				uintptr(unsafe.Pointer(&w.iovs[0])), uintptr(len(w.iovs)))
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 {
				return k, tcpip.TranslateErrno(errno)
			}
			break
		}
	}
	return len(ps), nil
}

// growHdrs makes room for the virtio_net_hdrs of n frames, when frames
// have them. Iovecs point into hdrs: call it before building them.
//
// Precondition: w.mu is held.
func (w *writer) growHdrs(n int) {
	if w.vnet && len(w.hdrs) < n {
		w.hdrs = make([][vnetHdrSize]byte, n)
	}
}

// appendFrame appends iovecs for the frame of pkt to iovs: with vnet, its
// virtio_net_hdr, kept in hdrs[k], then the packet.
func (w *writer) appendFrame(iovs []unix.Iovec, pkt *stack.PacketBuffer, k int) []unix.Iovec {
	if !w.vnet {
		return appendPacket(iovs, pkt, rawfile.MaxIovs)
	}
	h := &w.hdrs[k]
	putVNetHdr(h, pkt, w.linkHdr)
	iovs = append(iovs, unix.Iovec{Base: &h[0]})
	iovs[len(iovs)-1].SetLen(vnetHdrSize)
	return appendPacket(iovs, pkt, rawfile.MaxIovs-1)
}

// appendPacket appends iovecs for the bytes of pkt, headers included, to
// iovs. Past max views it joins the rest into the last iovec, as
// rawfile.AppendIovecFromBytes does.
func appendPacket(iovs []unix.Iovec, pkt *stack.PacketBuffer, max int) []unix.Iovec {
	start := len(iovs)
	own := iovs[start:] // this packet's iovecs; may move if iovs grows
	views, off := pkt.AsViewList()
	for v := views.Front(); v != nil; v = v.Next() {
		b := v.AsSlice()
		if off >= len(b) {
			off -= len(b)
			continue
		}
		own = rawfile.AppendIovecFromBytes(own, b[off:], max)
		off = 0
	}
	if len(own) == 0 {
		// An empty packet is still a message: give it an empty iovec
		// so that the message has one to point at.
		own = append(own, unix.Iovec{})
	}
	return append(iovs[:start], own...)
}
