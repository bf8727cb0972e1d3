package lro

import "github.com/netlro/netlro/rxbatch"

// Flusher is rxbatch.Flusher: a lower endpoint calls Flush at the end of
// each dispatch batch (the end of a NAPI poll in Linux). *Engine
// implements it; a lower endpoint finds it by a type assertion on the
// dispatcher it was attached to.
type Flusher = rxbatch.Flusher

// FragmentDispatcher is rxbatch.FragmentDispatcher, "receive in pages"
// (inet_lro lro_receive_frags): a lower endpoint that read a frame into
// pooled views hands the views over without building a PacketBuffer.
// *Engine implements it.
type FragmentDispatcher = rxbatch.FragmentDispatcher

// MultiQueue is rxbatch.MultiQueue. *Engine implements it: a lower endpoint
// that delivers from several goroutines, one per receive queue, each with
// flows of its own (as a NIC's RSS steers each flow to one queue, or as
// this project's fdbased reads each fd on its own goroutine), hands queue
// i's packets to Queue(i) and calls its Flush at the end of that queue's
// batches.
type MultiQueue = rxbatch.MultiQueue

// BytesDispatcher is rxbatch.BytesDispatcher: a program that holds each
// packet as bytes it reuses after the call (a VPN's Write(bufs), a socket
// read into a reused buffer) hands them over without building a
// PacketBuffer or copying them first. *Engine implements it.
type BytesDispatcher = rxbatch.BytesDispatcher
