package framed

import "gvisor.dev/gvisor/pkg/buffer"

// readDatagrams reads a batch of datagrams into slots of MaxFrame bytes
// of one chunk, with one system call, and delivers them.
func (r *Reader) readDatagrams() error {
	size := r.cfg.MaxFrame
	if r.view == nil {
		r.view = buffer.NewViewSize(chunkSize)
	}
	p := r.view.AsSlice()
	if r.drained {
		r.endBatch()
	}
	n, err := r.src.readMsgs(p, size, r.lens, r.drained)
	if err == errWouldBlock {
		r.endBatch()
		n, err = r.src.readMsgs(p, size, r.lens, true)
	}
	if err != nil {
		return err
	}
	r.stats.Reads++
	r.drained = n < len(r.lens)
	for k, l := range r.lens[:n] {
		if err := r.checkLen(r.off+int64(k), l); err != nil {
			return err
		}
		r.deliver(k*size, l)
	}
	r.off += int64(n)
	return nil
}
