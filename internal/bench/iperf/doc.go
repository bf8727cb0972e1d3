// Package iperf runs iperf-like TCP transfers into a gVisor netstack and
// checks them: it builds the receiving netstack on the link endpoint a
// Mode names (gVisor's fdbased with or without GRO, this project's
// fdbased, with or without netlro), sends seeded pseudo-random streams,
// compares their SHA-256 sums at both ends, and measures bytes, seconds,
// receiver CPU time and packets into netstack.
//
// Both the netstack-server example and the end-to-end tests use it:
//
//	sender netstack (gVisor fdbased, GSO off)
//	    --SOCK_SEQPACKET socketpair-- [Pump: loss, reorder, dup, corrupt]
//	    --> receiver link endpoint (Mode) --> receiver netstack --> SHA-256
//
// Run does all of it in one process; RunReceiver runs the receiving side
// while a SendFunc (another process, or a kernel TCP sender) sends.
package iperf
