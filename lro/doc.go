// Package lro is Large Receive Offload for gVisor's netstack: it merges
// in-order TCP segments of one flow into one large packet before netstack
// sees them.
//
// An Engine sits between a link endpoint and the NIC as a
// stack.NetworkDispatcher:
//
//	link endpoint --DeliverNetworkPacket / DeliverFragments--> Engine --> NIC
//	program       --DeliverBytes------------------------------>   |      ^
//	      |                                                        |      |
//	      +------------------- batch end: Flush() -----------------+------+
//
// It is modelled on Linux's generic LRO (net/ipv4/inet_lro.c). Each flow
// (addresses, ports, network protocol, link source and VLAN) has at most one
// session: a held packet to which later in-order data segments of the flow
// are appended. Segments that come as views (a PacketBuffer, or a frame
// in pooled views) have their payload views moved onto the held packet,
// with no copy. Segments that come as the caller's bytes (DeliverBytes:
// buffers the caller reuses, as a VPN's Write(bufs) has them) are read
// where they lie and never kept: the session they start holds a copy in
// pooled views of its own, which double in size as each merging
// segment's payload is copied in, so a merged packet has a handful of
// views, not one per segment, and no PacketBuffer is made for a segment
// that merges. Anything that cannot merge is delivered unchanged, after the held packet of its
// flow, so nothing is reordered. Held packets are delivered when the lower
// endpoint ends a dispatch batch (Flush, inet_lro's lro_flush_all), when a
// limit is reached, when a table slot is needed, or at the latest after
// Config.FlushDelay.
//
// Merged packets carry correct IPv4 total length and header checksum (IPv6
// payload length) and a TCP checksum computed from the segments' payload
// sums, so netstack verifies them as it verifies any packet. A segment whose
// checksum fails never merges.
//
// Most programs do not use an Engine directly: lroendpoint wraps a link
// endpoint with one. The examples (example_test.go here and in
// lroendpoint and fdbased) build their packets with gVisor's header
// package and can be copied as they are.
//
// # What merges
//
// A segment is appended to its flow's held packet when all of these hold:
//
//   - IPv4 without options, not a fragment, or IPv6 with no extension
//     headers but Hop-by-Hop, Routing (no segments left) and Destination
//     Options; no ECN CE mark; no bytes past the IP length.
//   - TCP with ACK set and a payload, and none of SYN, FIN, RST or URG; ECE
//     and CWR never by default, and under Resegmentable only when the held
//     packet has the same. PSH merges, and the merged packet carries it.
//   - No TCP options, or exactly NOP, NOP, timestamp (a 32-byte TCP
//     header), the layout inet_lro accepts.
//   - Its IPv4 header and TCP checksums are valid (or the lower endpoint
//     validated them).
//   - Its sequence number is the next one of the held packet, and its
//     header lengths, TOS, TTL and IPv6 extension headers are the held
//     packet's; its ACK and TSval are not older than the held packet's.
//   - The merged packet stays within Config.MaxSegments, Config.MaxBytes
//     and a 65535-byte IP packet.
//
// A segment that passes the first four rules and finds no held packet
// starts a session. One that is next in sequence but differs otherwise
// (another TTL, an older ACK or TSval) or would overfill the held packet
// ends its flow's session and starts the next. Anything else, an
// out-of-sequence segment (a retransmission or a gap) among them, is
// delivered unchanged, after its flow's held packet when it is TCP, and
// Stats counts why (PassTCPFlags, PassTCPOptions, PassOutOfOrder, ...).
// While Engine.SetMerging has turned merging off, every segment takes that
// path (PassMergingOff), as does a flow for a destination the NIC does not
// keep (PassNotLocal: netstack would forward or drop it; see Known
// limits).
//
// Two rule sets, chosen by Config.Resegmentable:
//
//   - false (inet_lro): data segments merge whatever their window and
//     however far their ACK moved on; the merged header carries the newest
//     ACK, window, TSval and TSecr, and PSH if any segment had it.
//   - true (Linux GRO, net/ipv4/tcp_offload.c): ACK, window, options,
//     flags but PSH, urgent pointer and IPv6 flow label must be identical,
//     IPv4 IDs equal or increasing by one, and all segments but the last
//     of the same size, so the merged packet can be cut back into exactly
//     the segments that arrived; a PSH or a short segment ends the packet.
//
// # Locking, delivery and bounds
//
// The flow table is split into shards by flow hash; each shard's mutex
// guards its flows, buckets, age list, free list, delivery queue and merge
// count. Other counters are atomics per shard. No lock is held while
// calling into netstack. What a shard hands up goes through its delivery
// queue (queue.go): each flow belongs to one of 16 lanes; a lane's packets
// reach netstack one at a time, in the order the table produced them, even
// when a Flush, the timer or an eviction on another goroutine ended the
// flow's session; different lanes go in parallel, each delivered by the
// goroutine that produced its packets, or, when another goroutine is
// delivering that lane, by that goroutine. A flow whose packets arrive on
// two goroutines at once is delivered in the order the goroutines reach
// the shard lock.
//
// What an engine keeps is bounded, however many goroutines deliver into
// it: at most Config.MaxFlows held sessions per table (the engine's own
// and each Queue's), and per shard at most 32 packets taken out of the
// table and not yet handed to netstack, queued or in the hands of the
// goroutine delivering them. A goroutine that would take more waits until
// the lanes make room. The one exception is a goroutine inside netstack on
// an engine's behalf, which netstack can bring back into an engine through
// a link that delivers synchronously (a loopback or pipe link): it never
// waits, neither for room nor in Flush, since what it would wait for may
// be its own delivery. Telling such a goroutine apart takes its goroutine
// ID: gVisor's goid reads it on amd64 and arm64, and elsewhere it is read,
// more slowly, from the goroutine's stack trace header, so the bound holds
// on every architecture.
//
// A lower endpoint with several receive queues, one goroutine each (this
// project's fdbased with several fds), gives queue i's packets to
// Engine.Queue(i): each queue has a table of its own and its Flush ends
// only its own sessions, as each Linux NAPI context has its own GRO list.
//
// # Known limits
//
//   - Netstack's own IP forwarding cannot send a merged packet on (at the
//     pinned gVisor version it checks the packet against the outgoing MTU
//     and copies it without its GSO options, so a merged packet with DF
//     set would be dropped). So, when the engine delivers to a NIC
//     (directly or through lroendpoint), a segment that would start a
//     session first asks the NIC whether it keeps the destination
//     (promiscuous, or one of its addresses; spoofing says yes to all),
//     and a flow that netstack forwards or drops passes unmerged
//     (PassNotLocal). Resegmentable's promise is for a forwarder outside
//     netstack that splits what it gets.
//   - IPv6 packets with extension headers the engine does not walk (AH,
//     ESP, Mobility, ...) pass through without flushing their flow's held
//     packet: their flow is not known. TCP sorts out the rare reorder.
//     (IPv4 and IPv6 first fragments of TCP do flush their flow.)
//   - Eviction takes the oldest session of the shard the new flow hashes
//     to, not of the whole table; set Config.Shards to 1 for a strict
//     oldest-first table.
//   - Merging hides per-segment ACK information from netstack (default
//     rules) and netstack has no per-packet segment count, so a merged
//     packet is acknowledged as one segment.
//   - Holding a batch of pooled views and releasing them together, as
//     merging must, scales poorly across goroutines in gVisor's buffer pool
//     (BenchmarkParallelDeliverers, row baseline-held; its figures are in
//     docs/results.md); with a Queue each, the engine adds no shared lock
//     or cache line of its own.
package lro
