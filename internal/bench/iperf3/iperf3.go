// Package iperf3 is the server side of the iperf3 protocol over any
// net.Listener, such as gVisor's gonet listener on a netstack, so that an
// unmodified iperf3 client (iperf3 -c) measures that stack.
//
// It serves TCP tests: the control connection with its cookie, the JSON
// parameter exchange, the TEST_START, TEST_RUNNING and TEST_END states,
// parallel streams (-P), forward and reverse (-R) direction, -t, -n and -k
// end conditions, and the exchange of results. It refuses UDP, SCTP and
// bidirectional tests with iperf3's "not implemented" error, and a second
// client while a test runs with ACCESS_DENIED, as iperf3 -s does. It does
// not do authentication, -O omit periods (bytes in them are counted) or
// --get-server-output.
//
// The protocol, as iperf3 3.x speaks it: every connection starts with a
// 37-byte cookie (36 characters and a NUL). The first connection with a
// new cookie is the control connection; the server sends state bytes on it
// and the two sides exchange JSON objects, each preceded by its length as
// a 4-byte big-endian integer. Connections that arrive with the control
// connection's cookie after CREATE_STREAMS are the data streams, numbered
// 1, 3, 4, 5, ... in the order they connect, as iperf3's
// iperf_add_stream numbers them.
package iperf3

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol states, sent as one signed byte on the control connection
// (iperf_api.h).
const (
	testStart       = 1
	testRunning     = 2
	testEnd         = 4
	paramExchange   = 9
	createStreams   = 10
	clientTerminate = 12
	exchangeResults = 13
	displayResults  = 14
	iperfDone       = 16
	accessDenied    = -1
	serverError     = -2
)

// ieUnimp is iperf3's i_errno for "not implemented yet", sent with
// serverError for a test this server cannot run.
const ieUnimp = 13

// cookieSize is the length of the cookie every connection starts with.
const cookieSize = 37

// maxJSON bounds a JSON message from a client.
const maxJSON = 1 << 20

// streamWait bounds how long the server waits for a client's data
// streams, and for a cookie on a new connection.
const streamWait = 10 * time.Second

// Options tune a Server. The zero value serves quietly.
type Options struct {
	// Logf, if not nil, receives one line per event (client connected,
	// test refused, test failed).
	Logf func(format string, args ...any)
	// OnTestEnd, if not nil, is called after each completed test.
	OnTestEnd func(Test)
	// CPUTime, if not nil, returns the server process's CPU time (user
	// and system), for the cpu_util figures the client prints.
	CPUTime func() (user, system time.Duration)
}

// Test describes a completed test.
type Test struct {
	Remote   net.Addr      // the client's control connection
	Reverse  bool          // the server sent (-R)
	Streams  int           // parallel data streams
	Bytes    int64         // bytes the server received or sent, over all streams
	Duration time.Duration // TEST_RUNNING to TEST_END
}

// Gbps returns the test's rate in Gbit/s.
func (t Test) Gbps() float64 {
	if t.Duration <= 0 {
		return 0
	}
	return float64(t.Bytes) * 8 / t.Duration.Seconds() / 1e9
}

// Server serves the iperf3 protocol, one test at a time.
type Server struct {
	opts Options

	mu sync.Mutex
	// +checklocks:mu
	active *test // the test in progress, nil when idle
}

// NewServer returns a Server with opts.
func NewServer(opts Options) *Server { return &Server{opts: opts} }

// Serve accepts connections on ln until ctx ends or ln fails, and serves
// each. It closes ln when ctx ends and returns ctx's error, after every
// test it started has ended.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("iperf3: accept: %w", err)
		}
		wg.Go(func() { s.handle(ctx, c) })
	}
}

// handle reads a new connection's cookie and makes it a data stream of the
// test in progress, the control connection of a new test, or refuses it.
func (s *Server) handle(ctx context.Context, c net.Conn) {
	var cookie [cookieSize]byte
	c.SetReadDeadline(time.Now().Add(streamWait))
	if _, err := io.ReadFull(c, cookie[:]); err != nil {
		s.logf("iperf3: %s: no cookie: %v", c.RemoteAddr(), err)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})

	s.mu.Lock()
	t := s.active
	switch {
	case t != nil && t.cookie == cookie:
		s.mu.Unlock()
		if !t.addStream(c) {
			c.Close()
		}
		return
	case t != nil:
		s.mu.Unlock()
		s.logf("iperf3: %s: busy with a test, access denied", c.RemoteAddr())
		writeState(c, accessDenied)
		c.Close()
		return
	}
	t = newTest(c, cookie)
	s.active = t
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		s.active = nil
		s.mu.Unlock()
		t.close()
	}()
	s.logf("iperf3: accepted connection from %s", c.RemoteAddr())
	res, err := t.run(ctx, s.opts.CPUTime)
	if err != nil {
		s.logf("iperf3: %s: %v", c.RemoteAddr(), err)
		return
	}
	if s.opts.OnTestEnd != nil {
		s.opts.OnTestEnd(res)
	}
}

func (s *Server) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// params are the client's test parameters, as send_parameters writes
// them. Only the fields this server acts on are decoded.
type params struct {
	TCP           bool   `json:"tcp"`
	UDP           bool   `json:"udp"`
	SCTP          bool   `json:"sctp"`
	Time          int    `json:"time"`
	Num           int64  `json:"num"`
	BlockCount    int64  `json:"blockcount"`
	Parallel      int    `json:"parallel"`
	Reverse       bool   `json:"reverse"`
	Bidirectional bool   `json:"bidirectional"`
	Len           int    `json:"len"`
	ClientVersion string `json:"client_version"`
}

// test is one client's test, from its control connection to IPERF_DONE.
type test struct {
	ctrl   net.Conn
	cookie [cookieSize]byte

	mu sync.Mutex
	// +checklocks:mu
	want int // data streams expected; 0 before CREATE_STREAMS
	// +checklocks:mu
	streams []net.Conn
	ready   chan struct{} // closed when all streams arrived
}

func newTest(ctrl net.Conn, cookie [cookieSize]byte) *test {
	return &test{ctrl: ctrl, cookie: cookie, ready: make(chan struct{})}
}

// addStream adds a data stream, or reports false when the test expects
// none now.
func (t *test) addStream(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.want == 0 || len(t.streams) == t.want {
		return false
	}
	t.streams = append(t.streams, c)
	if len(t.streams) == t.want {
		close(t.ready)
	}
	return true
}

// close closes every connection of the test.
func (t *test) close() {
	t.ctrl.Close()
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.streams {
		c.Close()
	}
}

// run drives the test through its states. Cancelling ctx ends it.
func (t *test) run(ctx context.Context, cpuTime func() (time.Duration, time.Duration)) (Test, error) {
	stop := context.AfterFunc(ctx, t.close)
	defer stop()
	if err := writeState(t.ctrl, paramExchange); err != nil {
		return Test{}, err
	}
	var p params
	if err := readJSON(t.ctrl, &p); err != nil {
		return Test{}, fmt.Errorf("read parameters: %w", err)
	}
	if p.UDP || p.SCTP || p.Bidirectional || p.Parallel < 0 || p.Parallel > 128 {
		writeServerError(t.ctrl, ieUnimp)
		return Test{}, fmt.Errorf("refused test (only TCP, forward or -R, 1 to 128 streams): %+v", p)
	}
	if p.Parallel == 0 {
		p.Parallel = 1
	}
	if p.Len <= 0 || p.Len > 16<<20 {
		p.Len = 128 << 10
	}

	t.mu.Lock()
	t.want = p.Parallel
	t.mu.Unlock()
	if err := writeState(t.ctrl, createStreams); err != nil {
		return Test{}, err
	}
	select {
	case <-t.ready:
	case <-time.After(streamWait):
		return Test{}, fmt.Errorf("%d of %d data streams arrived in %v", len(t.snapshotStreams()), p.Parallel, streamWait)
	case <-ctx.Done():
		return Test{}, ctx.Err()
	}
	streams := t.snapshotStreams()

	var u0, s0 time.Duration
	if cpuTime != nil {
		u0, s0 = cpuTime()
	}
	if err := writeState(t.ctrl, testStart); err != nil {
		return Test{}, err
	}
	if err := writeState(t.ctrl, testRunning); err != nil {
		return Test{}, err
	}
	start := time.Now()
	data := startData(streams, p)

	// The client says when the test ends, in both directions.
	st, err := readState(t.ctrl)
	end := time.Now()
	counts := data.stop()
	if err != nil {
		return Test{}, fmt.Errorf("wait for TEST_END: %w", err)
	}
	if st != testEnd {
		return Test{}, fmt.Errorf("client sent state %d, want TEST_END", st)
	}

	res := Test{Remote: t.ctrl.RemoteAddr(), Reverse: p.Reverse, Streams: len(streams), Duration: end.Sub(start)}
	for _, n := range counts {
		res.Bytes += n
	}
	if err := writeState(t.ctrl, exchangeResults); err != nil {
		return Test{}, err
	}
	var clientResults json.RawMessage
	if err := readJSON(t.ctrl, &clientResults); err != nil {
		return Test{}, fmt.Errorf("read client results: %w", err)
	}
	var user, sys time.Duration
	if cpuTime != nil {
		u1, s1 := cpuTime()
		user, sys = u1-u0, s1-s0
	}
	if err := writeJSON(t.ctrl, serverResults(p, counts, res.Duration, user, sys)); err != nil {
		return Test{}, err
	}
	if err := writeState(t.ctrl, displayResults); err != nil {
		return Test{}, err
	}
	// The client has its results now; whether IPERF_DONE follows or the
	// connection just closes changes nothing.
	_, _ = readState(t.ctrl)
	return res, nil
}

func (t *test) snapshotStreams() []net.Conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]net.Conn(nil), t.streams...)
}

// dataFlow moves bytes on the data streams while a test runs.
type dataFlow struct {
	streams []net.Conn
	counts  []atomic.Int64
	halt    atomic.Bool
	wg      sync.WaitGroup
}

// startData starts one goroutine per stream: a reader counting what the
// client sends, or, for -R, a writer sending random blocks of p.Len bytes
// until stopped or until the -n/-k amount is sent.
func startData(streams []net.Conn, p params) *dataFlow {
	d := &dataFlow{streams: streams, counts: make([]atomic.Int64, len(streams))}
	limit := p.Num
	if limit == 0 && p.BlockCount > 0 {
		limit = p.BlockCount * int64(p.Len)
	}
	var total atomic.Int64
	for i, c := range streams {
		d.wg.Go(func() {
			buf := make([]byte, p.Len)
			if !p.Reverse {
				for {
					n, err := c.Read(buf)
					d.counts[i].Add(int64(n))
					if err != nil || d.halt.Load() {
						return
					}
				}
			}
			rand.Read(buf)
			for !d.halt.Load() && (limit == 0 || total.Load() < limit) {
				n, err := c.Write(buf)
				d.counts[i].Add(int64(n))
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
	}
	return d
}

// stop ends the data flow and returns each stream's byte count. It closes
// the streams, as iperf3's server does on TEST_END: a client reading in
// reverse mode waits for whole blocks (Nread), so a stream left open after
// a write cut short would leave it waiting forever, deaf to the control
// connection.
func (d *dataFlow) stop() []int64 {
	d.halt.Store(true)
	for _, c := range d.streams {
		c.Close()
	}
	d.wg.Wait()
	counts := make([]int64, len(d.counts))
	for i := range d.counts {
		counts[i] = d.counts[i].Load()
	}
	return counts
}

// streamResult is one stream in the results, as send_results writes it.
type streamResult struct {
	ID          int     `json:"id"`
	Bytes       int64   `json:"bytes"`
	Retransmits int     `json:"retransmits"`
	Jitter      float64 `json:"jitter"`
	Errors      int     `json:"errors"`
	Packets     int     `json:"packets"`
	StartTime   float64 `json:"start_time"`
	EndTime     float64 `json:"end_time"`
}

// results are the server's results, as send_results writes them.
type results struct {
	CPUUtilTotal         float64        `json:"cpu_util_total"`
	CPUUtilUser          float64        `json:"cpu_util_user"`
	CPUUtilSystem        float64        `json:"cpu_util_system"`
	SenderHasRetransmits int            `json:"sender_has_retransmits"`
	Streams              []streamResult `json:"streams"`
}

// serverResults builds the server's results. Stream ids follow iperf3's
// numbering, 1, 3, 4, 5, ... Retransmits are unknown: -1, and a sender
// without retransmit counts (0) in reverse mode, -1 when receiving.
func serverResults(p params, counts []int64, d time.Duration, user, sys time.Duration) results {
	r := results{SenderHasRetransmits: -1, Streams: make([]streamResult, len(counts))}
	if p.Reverse {
		r.SenderHasRetransmits = 0
	}
	if secs := d.Seconds(); secs > 0 {
		r.CPUUtilUser = 100 * user.Seconds() / secs
		r.CPUUtilSystem = 100 * sys.Seconds() / secs
		r.CPUUtilTotal = r.CPUUtilUser + r.CPUUtilSystem
	}
	for i, n := range counts {
		id := i + 2
		if i == 0 {
			id = 1
		}
		r.Streams[i] = streamResult{ID: id, Bytes: n, Retransmits: -1, EndTime: d.Seconds()}
	}
	return r
}

func writeState(c net.Conn, state int8) error {
	if _, err := c.Write([]byte{byte(state)}); err != nil {
		return fmt.Errorf("send state %d: %w", state, err)
	}
	return nil
}

func readState(c net.Conn) (int8, error) {
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return 0, err
	}
	return int8(b[0]), nil
}

// writeServerError sends SERVER_ERROR with iperf3's error number errno
// and no system errno.
func writeServerError(c net.Conn, ierrno int32) {
	var b [9]byte
	st := int8(serverError)
	b[0] = byte(st)
	binary.BigEndian.PutUint32(b[1:], uint32(ierrno))
	c.Write(b[:])
}

func readJSON(c net.Conn, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > maxJSON {
		return fmt.Errorf("JSON of %d bytes, want at most %d", n, maxJSON)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	return json.Unmarshal(buf, v)
}

func writeJSON(c net.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	msg := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(msg, uint32(len(b)))
	copy(msg[4:], b)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("send JSON: %w", err)
	}
	return nil
}
