package lro

import "gvisor.dev/gvisor/pkg/tcpip/stack"

// Queue implements rxbatch.MultiQueue: it returns the *Engine of receive queue i.
// Each queue, 0 included, has a flow table of its own, sized by
// Config.MaxFlows, and its Flush delivers only that table's sessions, as
// each Linux NAPI context flushes only its own GRO list: two goroutines
// with their own queues never share a lock, and one queue's batch end
// never cuts another's batch short. e's own table takes what is delivered
// to e itself. Flush, Close and Stats on e cover every queue.
func (e *Engine) Queue(i int) stack.NetworkDispatcher { return e.queue(i) }

// queue is Queue with the engine's type.
func (e *Engine) queue(i int) *Engine {
	if e.parent != nil {
		return e.parent.queue(i)
	}
	i = max(i, 0)
	if qs := e.queues.Load(); qs != nil && i < len(*qs) {
		return (*qs)[i]
	}
	e.qmu.Lock()
	defer e.qmu.Unlock()
	var qs []*Engine
	if p := e.queues.Load(); p != nil {
		qs = *p
	}
	for len(qs) <= i {
		q := build(e.next, e.cfg, e.off)
		q.parent = e
		if e.closed.Load() {
			q.closed.Store(true)
		}
		qs = append(qs[:len(qs):len(qs)], q)
	}
	e.queues.Store(&qs)
	return qs[i]
}

// subqueues returns the engines of the queues made so far.
func (e *Engine) subqueues() []*Engine {
	if qs := e.queues.Load(); qs != nil {
		return *qs
	}
	return nil
}
