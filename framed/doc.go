// Package framed reads Ethernet frames from a VM's or container's frame
// transport, a stream socket of length-prefixed frames or a datagram
// socket, in batches, and hands them to a dispatcher as pooled views.
//
// The transports are those of gvisor-tap-vsock and the hypervisors it
// serves: qemu's stream sockets put a 4-byte big-endian length before
// each frame (Qemu), hyperkit's and gvisor-tap-vsock's stdio a 2-byte
// little-endian one (Hyperkit; rootlesskit's child uses it), and vfkit
// and bess send one frame per datagram (Datagram).
//
// A Reader reads as much as the socket has ready into one chunk of
// buffer.MaxChunkSize bytes per system call (with recvmmsg, a batch of
// datagrams into slots of that chunk), and hands every whole frame in it
// to the dispatcher as a buffer.Buffer holding a pooled view of its own
// (rxbatch.FragmentDispatcher: "receive in pages"), so a batch costs one
// system call and each frame one copy into pooled memory, with no
// allocation. Frames do not stay in the read chunk as views of it:
// gVisor's buffer copies a chunk that views share as soon as netstack
// pulls a header up from one of them (buffer.Buffer.PullUp is copy on
// write), which would cost a whole chunk per frame. A frame that a read
// cut where the chunk was full is moved to the chunk's front. Where the
// socket has nothing more ready (a read returned less than it had room
// for, or found nothing), the Reader ends the batch (rxbatch.Flusher)
// before it waits, as a NAPI poll that used less than its budget ends
// with a GRO flush, so that an LRO engine under the dispatcher merges
// what one batch brought and holds nothing longer.
//
// The data path, one batch:
//
//	socket --read (stream) or recvmmsg (datagrams)--> the Reader's chunk
//	       --> framing checks (zero, oversized, cut short: an error)
//	       --> DeliverFragments, per frame (copied to a pooled view)
//	       --> Flush, where the socket has nothing more ready
//
// Framing errors: a zero length, a length above Config.MaxFrame, a
// datagram larger than Config.MaxFrame, or the end of the stream inside a
// frame stops the Reader with a *FrameError. Every frame before the bad
// one was delivered whole and the batch ended; nothing after it is
// delivered, and nothing is delivered twice. A stream cannot be resynced
// after a bad length, so the caller closes the connection.
//
// Known limits:
//
//   - One copy per frame, where a reader of a socket into per-frame views
//     (netlro's fdbased with recvmmsg) has none: a stream's frame
//     boundaries are known only after the read. Datagrams could be read
//     into per-frame views, as fdbased's recvmmsg does; they are read
//     into slots of Config.MaxFrame bytes of the chunk instead, so one
//     recvmmsg takes at most buffer.MaxChunkSize/MaxFrame of them (43 at
//     MTU 1500, one at MTU 65520).
//   - The batch end needs a socket the Reader can read without waiting
//     (a net.Conn over a socket, on Linux). Any other io.Reader is read
//     one Read at a time, and each Read is a batch.
//   - Frames are Ethernet frames; one shorter than an Ethernet header is
//     dropped and counted (Stats.Runts), since the stream stays in sync.
package framed
