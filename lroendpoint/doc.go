// Package lroendpoint wraps any stack.LinkEndpoint with an lro.Engine, so
// that netstack receives merged TCP packets: pass the wrapper to
// CreateNIC where the lower endpoint would have gone.
//
// How held packets reach netstack depends on the lower endpoint:
//
//   - This project's fdbased ends every batch it reads with a Flush and
//     hands frames over as pooled views (rxbatch.FragmentDispatcher), so a
//     batch's segments leave at its end. This is the fast path; the
//     engine's timer can be turned off (lro.Config.FlushDelay < 0).
//   - An endpoint that knows nothing of batches (gVisor's fdbased,
//     channel, tun) delivers one PacketBuffer at a time, and held packets
//     leave at the latest lro.Config.FlushDelay after they arrived.
//   - A program that injects its own batches into such an endpoint (a
//     channel endpoint fed from a VPN's or proxy's receive loop) calls the
//     wrapper's Flush at the end of each batch, and sets FlushDelay
//     negative so that a slow batch is never split by the timer. The
//     package example does this.
//
// Everything the wrapper does not change (MTU, capabilities, GSO, headers,
// writes) goes to the lower endpoint as it is, and it can be torn down in
// any order under traffic: see Endpoint.
package lroendpoint
