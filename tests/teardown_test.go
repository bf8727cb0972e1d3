package tests

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/refs"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

var (
	teardownN = flag.Int("teardown.n", 200,
		"teardowns under traffic per lower endpoint in TestTeardownUnderTraffic, and in all in TestGVisorFdbasedTeardownDeadlock (2000 or more for a long run)")
	teardownDeadline = flag.Duration("teardown.deadline", 10*time.Second,
		"how long one stack's teardown may take before it counts as a hang")
	teardownKeepGoing = flag.Bool("teardown.keepgoing", false,
		"go on after a hang or a failure, to count them, instead of ending the lower endpoint's row at its first (each hang leaves its goroutines and packets behind)")
	teardownOrders = flag.String("teardown.orders", "",
		"a regular expression: only the teardown orders whose names it matches (see tdOrders), e.g. to tell apart hangs of different causes")
	teardownGVisor = flag.Bool("teardown.gvisor", false,
		"run TestGVisorFdbasedTeardownDeadlock, which shows gVisor's fdbased deadlocking in Stack.Destroy without netlro")
)

// teardownShortN is the iterations per row under -short, unless
// -teardown.n is given.
const teardownShortN = 40

// teardownConns is the number of connections each stack dials to the
// other.
const teardownConns = 2

// teardownFlow is what each side must have read before the teardown
// starts, so that it happens with data in flight both ways.
const teardownFlow = 16 << 10

// teardownFlowLimit bounds the wait for that much to flow.
const teardownFlowLimit = 5 * time.Second

// teardownSettle bounds how long, after a teardown, goroutines may take to
// exit and the engine to hand its last packets over.
const teardownSettle = 5 * time.Second

// tdOrder is one way to tear a stack down, given the stack and the link
// endpoint its NIC is on (lroendpoint's, in a netlro row).
type tdOrder struct {
	name string
	run  func(s *stack.Stack, ep stack.LinkEndpoint)
}

// tdOrders are the teardown orders a row rotates through. Wait on an
// endpoint comes only after something that asks it to stop, Close or
// Attach(nil): stack.LinkEndpoint leaves stopping to the implementation,
// and before that Wait may rightly wait forever.
var tdOrders = []tdOrder{
	{"Destroy", func(s *stack.Stack, _ stack.LinkEndpoint) { s.Destroy() }},
	{"RemoveNIC+Destroy", func(s *stack.Stack, _ stack.LinkEndpoint) {
		s.RemoveNIC(tdNIC)
		s.Destroy()
	}},
	{"Attach(nil)+Destroy", func(s *stack.Stack, ep stack.LinkEndpoint) {
		ep.Attach(nil)
		s.Destroy()
	}},
	{"Close+Destroy", func(s *stack.Stack, ep stack.LinkEndpoint) {
		ep.Close()
		s.Destroy()
	}},
	{"Stack.Close+Stack.Wait", func(s *stack.Stack, _ stack.LinkEndpoint) {
		s.Close()
		s.Wait()
	}},
	{"Attach(nil)+Wait+Destroy", func(s *stack.Stack, ep stack.LinkEndpoint) {
		ep.Attach(nil)
		ep.Wait()
		s.Destroy()
	}},
	{"Close+Wait+Destroy", func(s *stack.Stack, ep stack.LinkEndpoint) {
		ep.Close()
		ep.Wait()
		s.Destroy()
	}},
	{"Close||Destroy", func(s *stack.Stack, ep stack.LinkEndpoint) {
		var wg sync.WaitGroup
		wg.Go(ep.Close)
		wg.Go(s.Destroy)
		wg.Wait()
	}},
}

// teardownPeer tears the peer down the safe way: its endpoint detached
// without the stack's lock held, then the stack destroyed, so that only
// the receiver's teardown is under test.
func teardownPeer(s *stack.Stack, ep stack.LinkEndpoint) {
	ep.Attach(nil)
	s.Destroy()
}

// TestTeardownUnderTraffic tears a netstack down, in every order
// tdOrders lists, receiver first or peer first, while TCP flows both ways,
// over every lower endpoint users put under lroendpoint (issue #13). The
// receiver's NIC is on lroendpoint around the lower endpoint; the peer's
// on a plain endpoint. Each iteration checks that neither teardown hangs
// (-teardown.deadline) or panics, that no goroutine is left, and that the
// engine holds nothing afterwards, and runs gVisor's leak checker, so that
// a leak is reported against the iteration and order that made it; each
// row runs it again, and TestMain at the end.
//
// A row stops at its first hang, dumping every goroutine: what hung keeps
// the stack's lock for good. -teardown.keepgoing counts hangs instead
// (with a short -teardown.deadline), -teardown.orders picks orders, and
// -teardown.n=2000 makes a long run.
func TestTeardownUnderTraffic(t *testing.T) {
	n := *teardownN
	if testing.Short() && !flagSet("teardown.n") {
		n = teardownShortN
	}
	orders := tdOrders
	if *teardownOrders != "" {
		re, err := regexp.Compile(*teardownOrders)
		if err != nil {
			t.Fatalf("-teardown.orders: %v", err)
		}
		orders = nil
		for _, o := range tdOrders {
			if re.MatchString(o.name) {
				orders = append(orders, o)
			}
		}
		if len(orders) == 0 {
			t.Fatalf("-teardown.orders %q matches no order", *teardownOrders)
		}
	}
	for _, low := range tdLowers() {
		t.Run(low.name, func(t *testing.T) {
			newLink := low.setup(t)
			runTeardownRow(t, tdRow{
				newLink:   newLink,
				wrap:      true,
				orders:    orders,
				n:         n,
				leaked:    low.leakedGoroutines,
				keepGoing: *teardownKeepGoing,
			})
		})
	}
}

// TestGVisorFdbasedTeardownDeadlock shows that gVisor's fdbased alone,
// with ProcessorsPerChannel 1 and no netlro, deadlocks in Stack.Destroy
// under traffic: Destroy holds the stack's lock and calls Attach(nil),
// which waits for the dispatch goroutine, which delivers a packet inline
// and waits for that lock (tcp.replyWithReset, Stack.FindRoute). It goes
// on after each hang and fails with the count. Skipped unless
// -teardown.gvisor is given: it documents a bug outside netlro.
func TestGVisorFdbasedTeardownDeadlock(t *testing.T) {
	if !*teardownGVisor {
		t.Skip("skipping: documents gVisor's own deadlock; run with -teardown.gvisor (and a short -teardown.deadline)")
	}
	n := *teardownN
	hangs, done := runTeardownRow(t, tdRow{
		newLink:       func(int) (*tdLink, error) { return newSocketpairLink(newGVisorEndpoint(1)) },
		orders:        tdOrders[:1], // Stack.Destroy, as a user's defer does
		receiverFirst: true,
		n:             n,
		keepGoing:     true,
	})
	if hangs > 0 {
		t.Errorf("gVisor's fdbased, ProcessorsPerChannel 1, no netlro: Stack.Destroy under traffic hung in %d of %d iterations", hangs, done)
	}
}

// tdRow is one row's iterations.
type tdRow struct {
	newLink func(i int) (*tdLink, error)
	// wrap puts lroendpoint around the receiver's lower endpoint.
	wrap bool
	// orders rotate from one iteration to the next.
	orders []tdOrder
	// receiverFirst always tears the receiver down first; otherwise
	// every other round of orders starts with the peer.
	receiverFirst bool
	n             int
	// leaked is the goroutines each iteration may leave by a known fault
	// of the lower endpoint (tdLower.leakedGoroutines).
	leaked    int
	keepGoing bool
}

// tdStats sums up a row.
type tdStats struct {
	iterations, flowing, failed int
	hangs                       map[string]int // by order and first side
	engineIn, engineOut         uint64
	// phase sums the time spent in each phase of the iterations.
	phase [tdPhases]time.Duration
}

// The phases of an iteration, for the time each takes.
const (
	phaseSetup    = iota // link, endpoints, stacks
	phaseFlow            // connections up and data flowing
	phaseTeardown        // both teardowns
	phaseStop            // traffic goroutines, pumps, fds
	phaseSettle          // engine and goroutine checks
	tdPhases
)

var tdPhaseNames = [tdPhases]string{"setup", "flow", "teardown", "stop", "settle"}

// runTeardownRow runs row's iterations and logs a summary. It returns the
// number of iterations that hung and the number run.
func runTeardownRow(t *testing.T, row tdRow) (hangs, done int) {
	start := time.Now()
	st := tdStats{hangs: map[string]int{}}
	dumps := [2]int{1, 1} // goroutine dumps left for hangs and for other failures, so that a bad row stays readable
	for i := range row.n {
		r := teardownIteration(t, row, i, &dumps, &st)
		st.iterations++
		if r.hung {
			hangs++
			st.hangs[r.order]++
		}
		if r.failed {
			st.failed++
		}
		if (r.hung || r.failed) && !row.keepGoing {
			t.Logf("stopping the row at its first failure; -teardown.keepgoing counts them all")
			break
		}
	}
	var byOrder []string
	for o, c := range st.hangs {
		byOrder = append(byOrder, fmt.Sprintf("%s: %d", o, c))
	}
	sort.Strings(byOrder)
	var phases []string
	for p, d := range st.phase {
		phases = append(phases, fmt.Sprintf("%s %v", tdPhaseNames[p], d.Round(time.Millisecond)))
	}
	t.Logf("%d iterations in %v (%s): %d hung [%s], %d failed otherwise; %d with %d KiB read by each side before the teardown; engine: %d packets in, %d out",
		st.iterations, time.Since(start).Round(time.Millisecond), strings.Join(phases, ", "), hangs, strings.Join(byOrder, ", "), st.failed,
		st.flowing, teardownFlow>>10, st.engineIn, st.engineOut)
	if hangs == 0 && !t.Failed() && !leakReported {
		// Nothing runs now that could hold a packet: every stack and
		// endpoint of the row is gone.
		if err := repeatedLeakCheck(); err != nil {
			leakReported = true
			t.Errorf("gVisor's leak checker after the row: %v", err)
		}
	}
	return hangs, st.iterations
}

// tdResult is one iteration's outcome.
type tdResult struct {
	order  string
	hung   bool // a teardown did not return within -teardown.deadline
	failed bool // anything else failed
}

// leakReported is set once a leak check of an iteration or a row failed:
// what leaked stays in the checker's list for good, and every later check
// would report it again, against a row that did not leak it. TestMain's
// check at the end still reports it.
var leakReported bool

// leakModeOnce relaxes the leak checker after the first hang.
var leakModeOnce sync.Once

// teardownIteration builds the two stacks, starts traffic both ways, waits
// until it flows, tears both stacks down in iteration i's order and
// checks what is left.
func teardownIteration(t *testing.T, row tdRow, i int, dumps *[2]int, st *tdStats) (res tdResult) {
	order := row.orders[i%len(row.orders)]
	peerFirst := !row.receiverFirst && (i/len(row.orders))%2 == 1
	first := "receiver first"
	if peerFirst {
		first = "peer first"
	}
	res.order = order.name + ", " + first
	label := fmt.Sprintf("iteration %d (%s)", i, res.order)
	fail := func(format string, args ...any) {
		t.Errorf(label+": "+format, args...)
		res.failed = true
	}
	dump := func(k int) { // 0 for a hang, 1 for any other failure
		if dumps[k] > 0 {
			dumps[k]--
			t.Logf("%s: every goroutine:\n%s", label, allStacks())
		}
	}

	mark := time.Now()
	phase := func(p int) {
		now := time.Now()
		st.phase[p] += now.Sub(mark)
		mark = now
	}
	base := runtime.NumGoroutine()
	link, err := row.newLink(i)
	if err != nil {
		fail("link: %v", err)
		return res
	}
	ep := link.rx
	var lep *lroendpoint.Endpoint
	if row.wrap {
		if lep, err = lroendpoint.New(link.rx, lro.Config{}); err != nil {
			link.rx.Close()
			link.peer.Close()
			link.release(false)
			fail("lroendpoint: %v", err)
			return res
		}
		ep = lep
	}
	rx, err := newTeardownStack(ep, tdAddrRx, tdAddrPeer, tdMACPeer, link.ethernet)
	if err != nil {
		link.peer.Close()
		link.release(false)
		fail("receiver stack: %v", err)
		return res
	}
	peer, err := newTeardownStack(link.peer, tdAddrPeer, tdAddrRx, tdMACRx, link.ethernet)
	if err != nil {
		rx.Destroy()
		link.release(false)
		fail("peer stack: %v", err)
		return res
	}
	if link.start != nil {
		link.start()
	}
	phase(phaseSetup)
	tr, err := startTraffic(rx, peer, teardownConns, time.Now().Add(teardownFlowLimit+2**teardownDeadline+teardownSettle))
	if err != nil {
		fail("traffic: %v", err)
	} else {
		if tr.flowing(teardownFlow, teardownFlowLimit) {
			st.flowing++
		}
		// A little more, varied, so that teardowns catch the
		// dispatch goroutines at different points.
		time.Sleep(time.Duration(rand.N(3000)) * time.Microsecond)
	}

	phase(phaseFlow)
	phases := []struct {
		name string
		f    func()
	}{
		{"receiver", func() { order.run(rx, ep) }},
		{"peer", func() { teardownPeer(peer, link.peer) }},
	}
	if peerFirst {
		phases[0], phases[1] = phases[1], phases[0]
	}
	for _, ph := range phases {
		err := runBounded(*teardownDeadline, ph.f)
		switch {
		case errors.Is(err, errHang):
			res.hung = true
			t.Errorf("%s: the %s's teardown did not return in %v", label, ph.name, *teardownDeadline)
			dump(0)
		case err != nil:
			fail("the %s's teardown: %v", ph.name, err)
		}
	}
	phase(phaseTeardown)
	if res.hung {
		// What hung holds the stack's lock, packets, goroutines and
		// fds for good: leave them, and keep the leak checker's
		// report at the end from panicking over them.
		if tr != nil {
			tr.stop(100 * time.Millisecond)
		}
		link.release(true)
		leakModeOnce.Do(func() {
			t.Logf("a teardown hung: the leak checker only warns from now on, the hung stacks hold packets for good")
			refs.SetLeakMode(refs.LeaksLogWarning)
		})
		return res
	}
	if tr != nil && !tr.stop(teardownSettle) {
		fail("the traffic's goroutines did not return in %v after both stacks were torn down", teardownSettle)
		dump(1)
	}
	if err := link.release(false); err != nil {
		fail("%v", err)
		dump(1)
	}
	phase(phaseStop)
	if lep != nil {
		end := time.Now().Add(teardownSettle)
		s := lep.Stats()
		for s.Held() != 0 && time.Now().Before(end) {
			time.Sleep(time.Millisecond)
			s = lep.Stats()
		}
		if s.Held() != 0 {
			fail("the engine still holds %d packets after teardown: %s", s.Held(), s)
		}
		st.engineIn += s.PacketsIn
		st.engineOut += s.PacketsOut
	}
	want := base + row.leaked
	if n := settleGoroutines(want, teardownSettle); n > want {
		fail("%d goroutines %v after teardown, %d before it (%d allowed for the lower endpoint's known leak)", n, teardownSettle, base, row.leaked)
		dump(1)
	}
	if !res.failed && !leakReported {
		// Every stack and endpoint of the iteration is gone: nothing
		// refcounted may be live now. Checked here, each leak is
		// found in the iteration, and the order, that made it.
		if err := repeatedLeakCheck(); err != nil {
			leakReported = true
			fail("gVisor's leak checker after the iteration: %v", err)
		}
	}
	phase(phaseSettle)
	return res
}

// flagSet reports whether the flag name was given on the command line.
func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	return set
}
