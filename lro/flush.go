package lro

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// flushBatch is how many sessions a flush takes from a shard per lock.
const flushBatch = 16

// Flush implements rxbatch.Flusher: it delivers every held packet of every
// queue (inet_lro lro_flush_all). It returns once they, and any packet
// another goroutine took out of a table before, have reached netstack,
// except when it is called from inside netstack on an engine's behalf (a
// link that delivers synchronously): then it does not wait for other
// goroutines.
func (e *Engine) Flush() {
	e.own.flushAll(cFlushBatch)
	for _, q := range e.subqueues() {
		q.flushAll(cFlushBatch)
	}
}

// Flush implements rxbatch.Flusher: it delivers every held packet of q's
// table, as Engine.Flush does for every queue.
func (q *Queue) Flush() { q.flushAll(cFlushBatch) }

// Close stops the flush timers and delivers every held packet. Packets
// that arrive after Close pass through without being held.
func (e *Engine) Close() {
	// Closed first, then the queues under qmu: a queue that Queue makes
	// after this sees e closed, and one made before is in the list.
	e.own.closed.Store(true)
	e.qmu.Lock()
	qs := append([]*Queue{e.own}, e.subqueues()...)
	e.qmu.Unlock()
	for _, q := range qs {
		q.closed.Store(true)
		if q.timer != nil {
			q.timer.Stop()
		}
		q.flushAll(cFlushBatch)
	}
}

// flushAll delivers every held packet of q's table.
func (q *Queue) flushAll(cause counter) {
	for i := range q.shards {
		q.flushShard(&q.shards[i], cause, tcpip.MonotonicTime{}, true)
	}
}

// flushShard delivers sh's sessions that started at due or earlier, or all
// of them if every is set, a few at a time so that the lock is never held
// while netstack runs. It returns how long until the oldest session left
// is due, or 0 if none is left.
func (q *Queue) flushShard(sh *shard, cause counter, due tcpip.MonotonicTime, every bool) (next time.Duration) {
	// New sessions may start while we deliver; stop after as many rounds
	// as the shard has slots, so a busy shard cannot keep us.
	for range q.perShard/flushBatch + 1 {
		var out [flushBatch]pending
		n := 0
		sh.mu.Lock()
		sh.q.reserve(len(out))
		for j := sh.oldest; j >= 0 && n < len(out); {
			f := &sh.flows[j]
			newer := f.newer
			if wait := f.heldAt.Sub(due); !every && wait > 0 {
				if next == 0 || wait < next {
					next = wait
				}
			} else {
				out[n] = sh.take(j, cause)
				n++
			}
			j = newer
		}
		p := q.unlockAndDeliver(sh, out[:n], len(out), true)
		sh.q.wait(&p)
		if n < len(out) {
			break
		}
	}
	return next
}

// armTimer makes sure the flush timer will fire within d: one timer per
// batch of holds, not one per packet.
func (q *Queue) armTimer(d time.Duration) {
	if q.timer == nil || q.armed.Load() || !q.armed.CompareAndSwap(false, true) {
		return
	}
	q.timer.Reset(d)
}

// timerFlush runs when the timer fires. It delivers the sessions held for
// FlushDelay or longer, and only those: the timer was armed by the first
// hold of some batch, and a lower endpoint that ends its batches with
// Flush may have delivered that session long ago, so a younger one must
// wait for its own batch end or its own deadline. The timer is re-armed
// for the oldest session left. It disarms first, so a packet held while it
// runs arms the timer again.
func (q *Queue) timerFlush() {
	q.armed.Store(false)
	due := q.cfg.Clock.NowMonotonic().Add(-q.cfg.FlushDelay)
	var next time.Duration // until the oldest session left is due; 0: none left
	for i := range q.shards {
		if wait := q.flushShard(&q.shards[i], cFlushTimer, due, false); wait > 0 && (next == 0 || wait < next) {
			next = wait
		}
	}
	if next > 0 {
		q.armTimer(next)
	}
}
