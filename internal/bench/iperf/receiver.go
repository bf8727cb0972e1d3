package iperf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// Receiver accepts TCP connections on a netstack and reads each to its
// end, hashing what arrives.
type Receiver struct {
	ln       *gonet.TCPListener
	received atomic.Int64
}

// Listen listens on addr:port of s for a Receiver; mss is as for
// ListenTCP.
func Listen(s *stack.Stack, addr tcpip.Address, port uint16, mss int) (*Receiver, error) {
	ln, err := ListenTCP(s, addr, port, mss)
	if err != nil {
		return nil, err
	}
	return &Receiver{ln: ln}, nil
}

// ListenTCP listens on addr:port of s. A non-zero mss is advertised to
// every peer instead of the one the MTU gives (TCP_MAXSEG on the listener,
// which accepted connections inherit), so that peers send segments that
// small.
func ListenTCP(s *stack.Stack, addr tcpip.Address, port uint16, mss int) (*gonet.TCPListener, error) {
	var wq waiter.Queue
	ep, terr := s.NewEndpoint(tcp.ProtocolNumber, proto(addr), &wq)
	if terr != nil {
		return nil, fmt.Errorf("iperf: new TCP endpoint: %s", terr)
	}
	if mss > 0 {
		if terr := ep.SetSockOptInt(tcpip.MaxSegOption, mss); terr != nil {
			ep.Close()
			return nil, fmt.Errorf("iperf: MSS %d: %s", mss, terr)
		}
	}
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Addr: addr, Port: port}); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("iperf: bind %s:%d: %s", addr, port, terr)
	}
	if terr := ep.Listen(128); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("iperf: listen %s:%d: %s", addr, port, terr)
	}
	return gonet.NewTCPListener(s, &wq, ep), nil
}

// Received returns the number of bytes read so far, over all streams.
func (r *Receiver) Received() int64 { return r.received.Load() }

// Close stops listening.
func (r *Receiver) Close() { r.ln.Close() }

// ReceiveResult is what a receiver read.
type ReceiveResult struct {
	// Streams holds one result per connection, in accept order.
	Streams []StreamResult
	// Start is when the first connection was accepted, End when the last
	// stream ended.
	Start, End time.Time
}

// Accept accepts one connection, or fails when ctx ends.
func (r *Receiver) Accept(ctx context.Context) (net.Conn, error) {
	stop := context.AfterFunc(ctx, func() { r.ln.Close() })
	defer stop()
	c, err := r.ln.Accept()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("iperf: accept: %w", err)
	}
	return c, nil
}

// Receive accepts streams connections and reads each to its end. When ctx
// ends it closes every connection and returns ctx's error.
func (r *Receiver) Receive(ctx context.Context, streams int) (ReceiveResult, error) {
	var (
		res   = ReceiveResult{Streams: make([]StreamResult, streams)}
		errs  = make([]error, streams)
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	defer stop()
	for i := range streams {
		c, err := r.Accept(ctx)
		if err != nil {
			wg.Wait()
			return ReceiveResult{}, err
		}
		if i == 0 {
			res.Start = time.Now()
		}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		wg.Go(func() { res.Streams[i], errs[i] = receiveStream(c, &r.received) })
	}
	wg.Wait()
	res.End = time.Now()
	if err := ctx.Err(); err != nil {
		return ReceiveResult{}, err
	}
	return res, errors.Join(errs...)
}
