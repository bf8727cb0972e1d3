package fdbased

import "sync/atomic"

// Stats is a snapshot of an Endpoint's counters. Every frame read is
// counted in Frames and Bytes and then either delivered or counted in
// exactly one of the Dropped fields. Counters are read one by one while
// dispatch goes on, so a snapshot may catch a batch half counted.
type Stats struct {
	// Frames is the number of frames read from the fds, dropped ones
	// included.
	Frames uint64
	// Bytes is the number of bytes in those frames, link headers included.
	// An oversized frame counts the bytes that were read of it.
	Bytes uint64
	// Batches is the number of batches that read at least one frame. Each
	// ended with one call to rxbatch.Flusher.Flush when the dispatcher is one.
	Batches uint64

	// DroppedRunt counts frames shorter than the link header plus a
	// minimal IPv4 header.
	DroppedRunt uint64
	// DroppedOversized counts frames longer than the link header plus the
	// MTU, or truncated by the kernel.
	DroppedOversized uint64
	// DroppedNotForUs counts Ethernet frames sent to another unicast MAC
	// address.
	DroppedNotForUs uint64
	// DroppedNotIP counts frames without an Ethernet header whose IP
	// version is neither 4 nor 6.
	DroppedNotIP uint64
	// DroppedDetached counts frames read while Attach(nil) or Close was
	// stopping dispatch, when there was no dispatcher to give them to.
	DroppedDetached uint64
	// DroppedVNetHdr counts frames whose virtio_net_hdr (Options.VNetHdr)
	// cannot be applied: too short, a checksum field outside the headers,
	// or a super-packet type other than TCP; and packets the kernel
	// dropped itself, failing the read with EINVAL, because it could not
	// describe them in one.
	DroppedVNetHdr uint64

	// GSOFrames counts delivered frames that the kernel marked as TCP
	// super-packets (Options.VNetHdr with TSO turned on for the device).
	GSOFrames uint64

	// RingBatches is the number of those batches read through io_uring
	// (SourceIOUring) rather than read(2). Each is counted just after
	// its batch is, so a snapshot may count a batch but not yet its ring.
	RingBatches uint64

	// Written is the number of packets written to the fds.
	Written uint64
	// WriteErrors is the number of packets that failed to be written.
	WriteErrors uint64
}

// MeanBatch returns the mean number of frames read per batch, or 0 before
// the first batch.
func (s Stats) MeanBatch() float64 {
	if s.Batches == 0 {
		return 0
	}
	return float64(s.Frames) / float64(s.Batches)
}

// Delivered returns the number of frames handed to the dispatcher.
func (s Stats) Delivered() uint64 {
	return s.Frames - s.DroppedRunt - s.DroppedOversized - s.DroppedNotForUs - s.DroppedNotIP - s.DroppedDetached - s.DroppedVNetHdr
}

// counters are an Endpoint's live counters. Dispatch loops add a batch's
// worth at a time, so they touch the shared atomics once per batch, not
// once per frame.
type counters struct {
	frames, bytes, batches atomic.Uint64
	drops                  [numDropReasons]atomic.Uint64 // by dropReason; keep's unused
	gso                    atomic.Uint64
	written, writeErrors   atomic.Uint64
	ringBatches            atomic.Uint64
}

// batchCount counts one batch on the dispatch goroutine, without atomics.
type batchCount struct {
	frames, bytes uint64
	drops         [numDropReasons]uint64 // by dropReason
	gso           uint64                 // delivered super-packets
	ring          bool                   // read through io_uring
}

// add adds a finished batch to c.
func (c *counters) add(b *batchCount) {
	if b.frames == 0 {
		return
	}
	// Frames after batches and bytes, drops last: see snapshot.
	c.batches.Add(1)
	c.bytes.Add(b.bytes)
	c.frames.Add(b.frames)
	for why, n := range b.drops {
		if n != 0 {
			c.drops[why].Add(n)
		}
	}
	if b.gso != 0 {
		c.gso.Add(b.gso)
	}
	if b.ring {
		c.ringBatches.Add(1)
	}
}

// dropVNet counts a packet the kernel dropped, failing a read, because it
// could not describe it in a virtio_net_hdr.
func (c *counters) dropVNet() {
	c.frames.Add(1) // frames first: see snapshot
	c.drops[dropVNetHdr].Add(1)
}

// snapshot reads every counter. It reads the drops before the frames,
// which add adds first, so that a snapshot taken while batches end never
// has more drops than frames. Once a snapshot shows a batch's frames, it
// shows its bytes and the batch too.
func (c *counters) snapshot() Stats {
	var s Stats
	s.DroppedRunt = c.drops[dropRunt].Load()
	s.DroppedOversized = c.drops[dropOversized].Load()
	s.DroppedNotForUs = c.drops[dropNotForUs].Load()
	s.DroppedNotIP = c.drops[dropNotIP].Load()
	s.DroppedDetached = c.drops[dropDetached].Load()
	s.DroppedVNetHdr = c.drops[dropVNetHdr].Load()
	s.GSOFrames = c.gso.Load()
	s.Batches = c.batches.Load()
	s.Bytes = c.bytes.Load()
	s.Frames = c.frames.Load()
	s.Written = c.written.Load()
	s.RingBatches = c.ringBatches.Load()
	s.WriteErrors = c.writeErrors.Load()
	return s
}
