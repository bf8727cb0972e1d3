package main

import (
	"context"
	"runtime/pprof"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// counted wraps a tun.Device and counts its Read and Write batches. Write
// runs under the pprof label part=netstack, so that a CPU profile tells
// the receiving netstack's work from wireguard-go's.
type counted struct {
	tun.Device
	writes, written, maxWrite atomic.Uint64
	reads, read, maxRead      atomic.Uint64
	// held, if set, returns what the merging way still holds; Write counts
	// the batches after which it held something.
	held                 func() uint64
	heldWrites, heldMost atomic.Uint64
}

var netstackLabels = pprof.Labels("part", "netstack")

func (c *counted) Write(bufs [][]byte, offset int) (n int, err error) {
	c.writes.Add(1)
	c.written.Add(uint64(len(bufs)))
	setMax(&c.maxWrite, uint64(len(bufs)))
	pprof.Do(context.Background(), netstackLabels, func(context.Context) {
		n, err = c.Device.Write(bufs, offset)
	})
	if c.held != nil {
		if h := c.held(); h > 0 {
			c.heldWrites.Add(1)
			setMax(&c.heldMost, h)
		}
	}
	return n, err
}

func (c *counted) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := c.Device.Read(bufs, sizes, offset)
	if n > 0 {
		c.reads.Add(1)
		c.read.Add(uint64(n))
		setMax(&c.maxRead, uint64(n))
	}
	return n, err
}

func setMax(m *atomic.Uint64, v uint64) {
	for {
		old := m.Load()
		if v <= old || m.CompareAndSwap(old, v) {
			return
		}
	}
}

// batches is what a counted device saw in one direction.
type batches struct {
	Calls, Packets, Max uint64
}

// Mean returns packets per call.
func (b batches) Mean() float64 {
	if b.Calls == 0 {
		return 0
	}
	return float64(b.Packets) / float64(b.Calls)
}

func (c *counted) writeBatches() batches {
	return batches{c.writes.Load(), c.written.Load(), c.maxWrite.Load()}
}

func (c *counted) readBatches() batches {
	return batches{c.reads.Load(), c.read.Load(), c.maxRead.Load()}
}
