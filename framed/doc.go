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
// A Reader reads as much as the socket has ready into one pooled chunk
// (buffer.MaxChunkSize bytes) per system call, or with recvmmsg a batch of
// datagrams into chunk-sized slots, and hands every whole frame in it to
// the dispatcher as a buffer.Buffer holding one view of that chunk
// (rxbatch.FragmentDispatcher: "receive in pages"). Frames are never
// copied, except one that a read cut in two when the chunk was full: its
// first part is copied to the start of the next chunk. Where the socket
// has nothing more ready, the Reader ends the batch (rxbatch.Flusher), as
// a NAPI poll ends with a GRO flush, so that an LRO engine under the
// dispatcher merges what one batch brought and holds nothing longer.
//
// The data path, one batch:
//
//	socket --read (stream) or recvmmsg (datagrams)--> pooled chunk
//	       --> framing checks (zero, oversized, cut short: an error)
//	       --> DeliverFragments, per frame (a view of the chunk)
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
//   - A frame holds its chunk until the frame is released: a frame that
//     stays long in netstack (out of order in a TCP receive queue) keeps
//     the other frames' bytes of its chunk alive, as a page fragment does
//     in Linux.
//   - The batch end needs a socket the Reader can read without waiting
//     (a net.Conn over a socket, on Linux). Any other io.Reader is read
//     one Read at a time, and each Read is a batch.
//   - Frames are Ethernet frames; one shorter than an Ethernet header is
//     dropped and counted (Stats.Runts), since the stream stays in sync.
package framed
