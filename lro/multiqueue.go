package lro

import "gvisor.dev/gvisor/pkg/tcpip/stack"

// Queue implements rxbatch.MultiQueue: it returns receive queue i's *Queue,
// made on first use. Each queue has a flow table of its own, sized by
// Config.MaxFlows, and its Flush delivers only that table's sessions, as
// each Linux NAPI context flushes only its own GRO list: two goroutines
// with their own queues never share a lock, and one queue's batch end
// never cuts another's batch short. Queue(0) is not the table of what is
// delivered to e itself. Flush, Close and Stats on e cover every queue.
func (e *Engine) Queue(i int) stack.NetworkDispatcher { return e.queue(i) }

// queue is Queue with the queue's type.
func (e *Engine) queue(i int) *Queue {
	i = max(i, 0)
	if qs := e.queues.Load(); qs != nil && i < len(*qs) {
		return (*qs)[i]
	}
	e.qmu.Lock()
	defer e.qmu.Unlock()
	var qs []*Queue
	if p := e.queues.Load(); p != nil {
		qs = *p
	}
	for len(qs) <= i {
		q := newQueue(e.own.next, e.own.cfg, e.own.off)
		if e.own.closed.Load() {
			q.closed.Store(true)
		}
		qs = append(qs[:len(qs):len(qs)], q)
	}
	e.queues.Store(&qs)
	return qs[i]
}

// subqueues returns the queues made so far.
func (e *Engine) subqueues() []*Queue {
	if qs := e.queues.Load(); qs != nil {
		return *qs
	}
	return nil
}
