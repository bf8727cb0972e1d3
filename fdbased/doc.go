// Package fdbased is a link endpoint over file descriptors that reads frames
// in batches, hands them to the layer above as pooled views, and says where
// each batch ends.
//
// It is netlro's NAPI poll. gVisor's own fdbased reads at most eight
// messages per recvmmsg, builds a PacketBuffer for every frame and never
// tells the layer above that a batch is over, so an LRO engine above it can
// only guess when to flush. This endpoint reads everything an fd has ready,
// up to Options.BatchSize frames (NAPI's budget), into views from gVisor's
// buffer pool, one view per frame, and then:
//
//   - if the attached dispatcher is an rxbatch.FragmentDispatcher, hands
//     each frame over as a buffer.Buffer holding that one view ("receive
//     in pages", inet_lro's lro_receive_frags), so no PacketBuffer is built
//     for a segment that merges;
//   - otherwise builds a PacketBuffer exactly as gVisor's fdbased does and
//     calls DeliverNetworkPacket;
//   - at the end of the batch, if the dispatcher is an rxbatch.Flusher,
//     calls Flush once (inet_lro's lro_flush_all at the end of a NAPI
//     poll).
//
// With several fds, each read by its own goroutine, a dispatcher that is
// an rxbatch.MultiQueue (the engine under lroendpoint) gets fd i's frames
// on its Queue(i): each fd has a flow table of its own and ends only its
// own sessions, as each NAPI context has its own GRO list.
//
// The data path, one batch:
//
//	fd --recvmmsg, read(2) or io_uring--> views (one pooled chunk per frame)
//	        --> link header checks (oversized, runt, not for us, not IP: dropped and counted)
//	        --> DeliverFragments or DeliverNetworkPacket, per frame
//	        --> Flush, once per batch
//
// Supported fds: a SOCK_SEQPACKET or SOCK_DGRAM unix socket (one end of a
// socketpair), an AF_PACKET socket, or a TAP device opened with
// IFF_TAP|IFF_NO_PI (set Options.EthernetHeader) or a TUN device opened
// with IFF_TUN|IFF_NO_PI. Sockets are written with sendmmsg, other fds
// with writev, one packet per call.
//
// Each fd is read the cheapest way it can be, unless Options.Source says
// otherwise (Source): a socket with recvmmsg, a batch per call; a TAP or
// TUN device with an io_uring multishot read, a batch per call and one
// copy of each frame, where New's probe finds that the kernel lets this
// process use io_uring (Linux 6.7, neither the kernel.io_uring_disabled
// sysctl nor a seccomp profile forbidding it), and with read(2) until
// EAGAIN, one call per frame, otherwise; with read(2) too with
// Options.VNetHdr, which puts each super-packet straight into its views.
// Endpoint.Sources says which each fd got and why.
//
// With Options.VNetHdr, every frame comes after a virtio_net_hdr (a TAP or
// TUN device opened with IFF_VNET_HDR, an AF_PACKET socket with
// PACKET_VNET_HDR): each message is read into the header, the frame's view
// and a spare view of up to 64 KiB, which only a TCP super-packet reaches
// and which is replaced only then. A partial checksum
// (VIRTIO_NET_HDR_F_NEEDS_CSUM) is completed; a TCP super-packet (the
// kernel's TSO, once TUNSETOFFLOAD turns it on for the device) is
// delivered as one packet of up to 64 KiB, so the kernel's TCP costs one
// read per 64 KiB instead of one per MTU. The other way, the endpoint
// offers netstack host GSO (Endpoint.SupportedGSO): its TCP writes packets
// of up to 64 KiB with a partial checksum, and the header asks the kernel
// to segment them and complete the checksum.
//
// Known limits:
//
//   - No GSO on output without VNetHdr, neither host nor gVisor's:
//     netstack segments before it writes.
//   - A frame larger than the link header plus the MTU is dropped, never
//     truncated or passed half-read, unless VNetHdr marks it a TCP
//     super-packet. A view is the link header plus MTU plus
//     one byte, so with an MTU above buffer.MaxChunkSize minus that, views
//     no longer come from the pool and every frame allocates.
//   - Writes use the fd chosen by the packet's hash, as gVisor's fdbased
//     does; a full fd drops the packet (tcpip.ErrWouldBlock).
//   - The endpoint never closes the fds it was given, as gVisor's fdbased
//     does not: the caller keeps them open until Wait returns and closes
//     them after.
package fdbased
