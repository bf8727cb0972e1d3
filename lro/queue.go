package lro

import (
	"math/bits"

	"gvisor.dev/gvisor/pkg/sync"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// numLanes is the number of lanes of a shard's delivery queue. Each flow
// belongs to one lane, chosen by its hash; packets of one lane reach
// netstack one at a time and in order, packets of different lanes in
// parallel. Two goroutines delivering distinct flows therefore share a
// lane, and one of them waits for the other's netstack calls, only for
// one pair of flows in numLanes.
const numLanes = 16

// queueLimit is the most packets a shard has taken out of its table and
// not yet handed to netstack, wherever they are: queued on a lane or in
// the hands of the goroutine delivering them. A goroutine that would take
// more waits for room first (unless it is inside netstack; see
// deliverers.go). With at most MaxFlows held sessions, this bounds what an
// engine keeps, whatever the number of goroutines delivering into it.
const queueLimit = 2 * flushBatch

// pending is a packet on its way to netstack: an ended session, or a
// packet passed through as it is.
type pending struct {
	s     session // s.pkt goes up; s.cause is the flush cause or pass reason
	proto tcpip.NetworkProtocolNumber
	lane  uint8 // the lane of the packet's flow
	owned bool  // the engine holds a reference to s.pkt, dropped after delivery
}

// laneOf returns the lane of a flow hash. The shard takes the low bits and
// the bucket bits 32 and up; the lane takes bits from the middle.
func laneOf(h uint64) uint8 { return uint8(h>>24) & (numLanes - 1) }

// sessionItem is an ended session's packet, whose reference the engine
// owns; h is its flow's hash.
func sessionItem(f session, cause counter, h uint64) pending {
	f.cause = cause
	proto := header.IPv4ProtocolNumber
	if f.v6 {
		proto = header.IPv6ProtocolNumber
	}
	return pending{s: f, proto: proto, lane: laneOf(h), owned: true}
}

// passItem is the packet of r, delivered as it is; h is its flow's hash,
// and verified says its checksums were verified (packetRef.packet).
func passItem(proto tcpip.NetworkProtocolNumber, r *packetRef, reason counter, h uint64, verified bool) pending {
	pkt, owned := r.packet(proto, verified)
	return pending{s: session{pkt: pkt, cause: reason}, proto: proto, lane: laneOf(h), owned: owned}
}

// lane is one ordered path to netstack.
type lane struct {
	// busy is set while a goroutine delivers the lane's packets; items
	// is empty whenever busy is not set.
	busy  bool
	items []pending // queued packets; items[head:] are still to go
	head  int
	// queued counts packets ever given to the lane, delivered by the
	// goroutine that took it or queued, done those of them delivered, in
	// the same order: a Flush waits for done to reach a count.
	queued, done uint64
}

// deliveryQueue hands a shard's packets to netstack with no lock held,
// keeping each flow's packets in the order the table produced them, even
// when a Flush, the timer or an eviction on another goroutine ended the
// flow's session, and bounding what is on its way (queueLimit).
//
// A producer, holding the shard's lock, first reserves room (reserve),
// then changes the table, then pushes what the change produced (push):
// a packet whose lane is idle is the producer's to deliver, and the
// producer takes the lane; a packet whose lane another goroutine is
// delivering is queued behind that goroutine's packets, and that goroutine
// delivers it. The producer then unlocks and delivers its own packets,
// then whatever was queued meanwhile on the lanes it took (run), as one
// CPU runs a Linux qdisc. A Flush waits for the packets it queued on other
// goroutines' lanes (wait).
//
// Nobody waits while holding a lane, and nobody inside netstack waits at
// all, so a wait always ends unless netstack itself blocks; the lanes it
// would wait for are then blocked with it.
type deliveryQueue struct {
	mu *sync.Mutex // the shard's lock

	// +checklocks:mu
	lanes [numLanes]lane
	// reserved is room taken by producers that have not pushed yet;
	// undelivered counts pushed packets not yet handed to netstack.
	// +checklocks:mu
	reserved int
	// +checklocks:mu
	undelivered int
	// +checklocks:mu
	waiters int
	cond    sync.Cond // on mu: room was made or a lane progressed

	// deliver hands one packet to netstack. It takes the packet by value:
	// a pointer passed through a func value escapes, and would move every
	// producer's item array to the heap.
	deliver func(pending)
}

// init makes q deliver with deliver, under the lock mu.
func (q *deliveryQueue) init(mu *sync.Mutex, deliver func(pending)) {
	q.mu = mu
	q.cond.L = mu
	q.deliver = deliver
}

// pushed says what push left to the producer: its packets that it
// delivers itself, the lanes it took, and where it queued the rest.
type pushed struct {
	mine    uint32 // bit i: items[i] is the producer's to deliver
	lanes   uint16 // bit l: the producer took lane l
	waits   uint16 // bit l: packets were queued on lane l, up to waitFor[l]
	waitFor [numLanes]uint64
}

// reserve takes room for n packets, waiting while the shard has
// queueLimit packets on their way, unless the caller is inside netstack.
// The lock may be released while it waits.
//
// +checklocks:q.mu
func (q *deliveryQueue) reserve(n int) {
	for q.reserved+q.undelivered > 0 && q.reserved+q.undelivered+n > queueLimit && deliverers.mayWait() {
		q.waiters++
		q.cond.Wait()
		q.waiters--
	}
	q.reserved += n
}

// unreserve returns a reservation of n that produced nothing.
//
// +checklocks:q.mu
func (q *deliveryQueue) unreserve(n int) { q.reserved -= n }

// push gives the queue items, in the order the table produced them, out
// of a reservation of reserved >= len(items); the rest of the reservation
// is returned. Queued items take a reference of their own to a borrowed
// packet, which must outlive the producer's call. With every set, as for a
// Flush, the returned waits also cover the lanes other goroutines are
// delivering, so that wait returns once everything taken out of the table
// before these items has reached netstack.
//
// +checklocks:q.mu
func (q *deliveryQueue) push(items []pending, reserved int, every bool) (p pushed) {
	q.reserved -= reserved
	q.undelivered += len(items)
	for i := range items {
		it := &items[i]
		bit := uint16(1) << it.lane
		ln := &q.lanes[it.lane]
		ln.queued++
		switch {
		case p.lanes&bit != 0:
			p.mine |= 1 << i // after this producer's earlier packets
		case !ln.busy:
			ln.busy = true
			p.lanes |= bit
			p.mine |= 1 << i
		default:
			if !it.owned {
				it.s.pkt.IncRef()
				it.owned = true
			}
			ln.items = append(ln.items, *it)
			p.waits |= bit
			p.waitFor[it.lane] = ln.queued
		}
	}
	if every {
		for l := range q.lanes {
			if bit := uint16(1) << l; q.lanes[l].busy && p.lanes&bit == 0 {
				p.waits |= bit
				p.waitFor[l] = q.lanes[l].queued
			}
		}
	}
	if q.reserved < 0 {
		panic("lro: delivery queue: more pushed than reserved")
	}
	return p
}

// run delivers the producer's own packets of items, then what was queued
// meanwhile on the lanes it took, until they are empty. It is called
// without the lock.
func (q *deliveryQueue) run(items []pending, p *pushed) {
	if p.mine == 0 {
		return
	}
	slot := deliverers.enter()
	defer deliverers.leave(slot)
	for m := p.mine; m != 0; m &= m - 1 {
		q.deliver(items[bits.TrailingZeros32(m)])
	}
	q.mu.Lock()
	q.undelivered -= bits.OnesCount32(p.mine)
	for m := p.mine; m != 0; m &= m - 1 {
		q.lanes[items[bits.TrailingZeros32(m)].lane].done++
	}
	for m := p.lanes; m != 0; m &= m - 1 {
		q.drain(&q.lanes[bits.TrailingZeros16(m)])
	}
	q.signal()
	q.mu.Unlock()
}

// drain delivers what is queued on ln, a few packets per lock, until it
// is empty, then frees the lane.
//
// +checklocks:q.mu
func (q *deliveryQueue) drain(ln *lane) {
	var batch [flushBatch]pending
	for {
		n := copy(batch[:], ln.items[ln.head:])
		if n == 0 {
			clear(ln.items)
			ln.items, ln.head, ln.busy = ln.items[:0], 0, false
			return
		}
		ln.head += n
		q.mu.Unlock()
		for i := range n {
			q.deliver(batch[i])
		}
		clear(batch[:n])
		q.mu.Lock()
		ln.done += uint64(n)
		q.undelivered -= n
		q.signal()
	}
}

// signal wakes the goroutines waiting for room or for a lane.
//
// +checklocks:q.mu
func (q *deliveryQueue) signal() {
	if q.waiters > 0 {
		q.cond.Broadcast()
	}
}

// wait returns once the packets push queued on other goroutines' lanes
// have reached netstack. Inside netstack it returns at once: the lane it
// would wait for may be one its own caller is delivering.
func (q *deliveryQueue) wait(p *pushed) {
	if p.waits == 0 || !deliverers.mayWait() {
		return
	}
	q.mu.Lock()
	for m := p.waits; m != 0; m &= m - 1 {
		l := bits.TrailingZeros16(m)
		for q.lanes[l].done < p.waitFor[l] {
			q.waiters++
			q.cond.Wait()
			q.waiters--
		}
	}
	q.mu.Unlock()
}

// onTheirWay returns the packets pushed and not yet delivered.
//
// +checklocks:q.mu
func (q *deliveryQueue) onTheirWay() int { return q.undelivered }
