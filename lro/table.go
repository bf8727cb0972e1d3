package lro

import (
	"encoding/binary"
	"math/bits"

	"gvisor.dev/gvisor/pkg/sync"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// flowKey identifies a TCP flow: a comparable struct of fixed-size fields,
// so lookups need no allocation.
type flowKey struct {
	src, dst [16]byte
	ports    uint32 // source port << 16 | destination port
	proto    uint32 // IP version, 4 or 6
	link     uint64 // Ethernet source address, VLAN ID << 48
}

// equal reports whether k and o name the same flow. Field by field, the
// ports first, it compiles to a few loads and compares where == on the
// struct calls runtime.memequal on every lookup.
func (k *flowKey) equal(o *flowKey) bool {
	return k.ports == o.ports && k.src == o.src && k.dst == o.dst && k.link == o.link && k.proto == o.proto
}

// hash mixes the key with a per-engine random seed, so a peer cannot
// choose addresses and ports that put every flow in one bucket. It reads
// the key a word at a time, where jenkins one-at-a-time (fdbased's
// connectionHash) takes a step per byte, in three independent mixes and a
// final one, which the CPU can run side by side where a chain of six mixes
// would run one after another.
func (k *flowKey) hash(seed uint64) uint64 {
	le := binary.LittleEndian
	a := mix(le.Uint64(k.src[:8])^seed, le.Uint64(k.src[8:])^0xa0761d6478bd642f)
	b := mix(le.Uint64(k.dst[:8])^seed, le.Uint64(k.dst[8:])^0xe7037ed1a0b428db)
	c := mix((uint64(k.ports)<<32|uint64(k.proto))^seed, k.link^0x8ebc6af09c88c6e3)
	return mix(a^b^c, seed)
}

// mix folds w into h with a 128-bit multiply (the wyhash step).
func mix(h, w uint64) uint64 {
	hi, lo := bits.Mul64(h^w, 0x9e3779b97f4a7c15^w)
	return hi ^ lo
}

// flowHash returns the hash of s's flow key, computing it once.
func (s *segment) flowHash(seed uint64) uint64 {
	if !s.hashed {
		s.hash, s.hashed = s.key.hash(seed), true
	}
	return s.hash
}

// flow is a table slot: a flow key, its links, and its session.
type flow struct {
	key   flowKey
	hash  uint64
	chain int32 // next flow in the same bucket, or -1
	older int32 // age list: previous (older) session, or -1
	newer int32 // age list: next (newer) session, or -1; free list link
	session
}

// session is a held packet and what the next segment of its flow must look
// like to join it (inet_lro's net_lro_desc).
type session struct {
	pkt *stack.PacketBuffer // held packet; the session owns one reference
	hdr []byte              // its IP and TCP headers, rewritten at flush
	// grows is set when pkt is the engine's own copy (DeliverBytes'
	// packets): later segments' payloads are copied into its payload
	// views, of which room is what is free of the last, lastView that
	// view's size; pkt is cut to its length at flush (bytes.go).
	grows    bool
	room     []byte
	lastView int

	v6         bool
	ipLen      int
	tcpLen     int
	segs       int    // segments in pkt
	payload    int    // TCP payload bytes in pkt
	maxPayload int    // payload limit of pkt
	mss        int    // payload of the first segment
	fixedID    bool   // IPv4: the segments' IDs are all equal (Linux's ip_fixedid)
	sum        uint16 // ones' complement sum of the payload so far
	nextSeq    uint32
	ack        uint32
	window     uint16
	psh        bool
	ts         bool
	tsVal      uint32
	tsEcr      uint32
	tos        uint8
	ttl        uint8
	cause      counter             // why the session ended, set when it is removed
	heldAt     tcpip.MonotonicTime // when the session started, if a timer runs
}

// shard is one independently locked part of the flow table: a fixed array
// of flows, hash buckets chained through the flows, an age list for
// eviction and a free list, all sized once in New.
// +checklocksalias:q.mu=mu
type shard struct {
	mu sync.Mutex
	// +checklocks:mu
	flows []flow
	// +checklocks:mu
	buckets []int32
	// +checklocks:mu
	free int32
	// +checklocks:mu
	oldest int32
	// +checklocks:mu
	newest int32
	// +checklocks:mu
	n int
	// last is the session found or started last, checked before hashing:
	// a batch is mostly runs of one flow.
	// +checklocks:mu
	last int32
	// merged counts segments merged, under mu: an atomic add per segment
	// costs more than the lock already held.
	// +checklocks:mu
	merged uint64
	// q hands what the table produces to netstack, in order.
	q deliveryQueue

	stats counters
}

// init sizes sh for capacity sessions; deliver hands a packet to netstack.
// The shard is not shared yet.
//
// +checklocksignore
func (sh *shard) init(capacity int, deliver func(pending)) {
	sh.flows = make([]flow, capacity)
	sh.q.init(&sh.mu, deliver)
	sh.buckets = make([]int32, nextPow2(2*capacity))
	for i := range sh.buckets {
		sh.buckets[i] = -1
	}
	for i := range sh.flows {
		sh.flows[i].newer = int32(i + 1)
	}
	sh.flows[capacity-1].newer = -1
	sh.free, sh.oldest, sh.newest, sh.last = 0, -1, -1, -1
}

// bucket returns the bucket index of a key hash. The low bits chose the
// shard, so the bucket uses the high ones.
//
// +checklocks:sh.mu
func (sh *shard) bucket(h uint64) int {
	return int(h>>32) & (len(sh.buckets) - 1)
}

// lookup returns the index of the session of s's flow, or -1. It hashes
// the flow key only if the last session is not s's.
//
// +checklocks:sh.mu
func (sh *shard) lookup(s *segment, seed uint64) int32 {
	if i := sh.last; i >= 0 && sh.flows[i].key.equal(&s.key) {
		return i
	}
	for i := sh.buckets[sh.bucket(s.flowHash(seed))]; i >= 0; i = sh.flows[i].chain {
		if sh.flows[i].key.equal(&s.key) {
			sh.last = i
			return i
		}
	}
	return -1
}

// full reports whether a new session needs an eviction first.
//
// +checklocks:sh.mu
func (sh *shard) full() bool { return sh.free < 0 }

// insert takes a free slot for key and makes it the newest session. The
// shard must not be full.
//
// +checklocks:sh.mu
func (sh *shard) insert(s *segment, seed uint64) int32 {
	key, h := &s.key, s.flowHash(seed)
	i := sh.free
	f := &sh.flows[i]
	sh.free = f.newer
	b := sh.bucket(h)
	*f = flow{key: *key, hash: h, chain: sh.buckets[b], older: sh.newest, newer: -1}
	sh.buckets[b] = i
	if sh.newest >= 0 {
		sh.flows[sh.newest].newer = i
	} else {
		sh.oldest = i
	}
	sh.newest = i
	sh.n++
	sh.last = i
	return i
}

// remove ends session i and returns it; the held packet's reference
// passes to the caller.
//
// +checklocks:sh.mu
func (sh *shard) remove(i int32) session {
	if sh.last == i {
		sh.last = -1
	}
	f := &sh.flows[i]
	for p := &sh.buckets[sh.bucket(f.hash)]; *p >= 0; p = &sh.flows[*p].chain {
		if *p == i {
			*p = f.chain
			break
		}
	}
	if f.older >= 0 {
		sh.flows[f.older].newer = f.newer
	} else {
		sh.oldest = f.newer
	}
	if f.newer >= 0 {
		sh.flows[f.newer].older = f.older
	} else {
		sh.newest = f.older
	}
	out := f.session
	*f = flow{newer: sh.free}
	sh.free = i
	sh.n--
	return out
}

// take ends session i and returns its packet, on its way out for cause.
//
// +checklocks:sh.mu
func (sh *shard) take(i int32, cause counter) pending {
	h := sh.flows[i].hash
	return sessionItem(sh.remove(i), cause, h)
}

func nextPow2(n int) int {
	if n <= 1 {
		return 1
	}
	return 1 << bits.Len(uint(n-1))
}
