package tests

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	gfdbased "gvisor.dev/gvisor/pkg/tcpip/link/fdbased"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/internal/bench/tapns"
)

// tdLink is one iteration's pair of link endpoints: the receiver's lower
// endpoint (lroendpoint wraps it) and the peer's, connected to each
// other.
type tdLink struct {
	rx, peer stack.LinkEndpoint
	// ethernet says the link carries Ethernet frames (a TAP device).
	ethernet bool
	// ours is rx when it is this project's fdbased, for its counters.
	ours *fdbased.Endpoint
	// start, if not nil, starts what carries packets between the two,
	// once both NICs exist.
	start func()
	// release stops what start started and closes the fds, once both
	// stacks are torn down. With hung set, a teardown did not return:
	// what may still use the fds keeps them, and nothing is waited for.
	release func(hung bool) error
}

// tdLower is a row of the teardown test: a kind of lower endpoint.
type tdLower struct {
	name string
	// setup prepares what the row's iterations share, or skips t, and
	// returns what makes one iteration's link; i numbers the iteration.
	setup func(t *testing.T) func(i int) (*tdLink, error)
	// leakedGoroutines is how many goroutines each link leaks by a known
	// fault of the lower endpoint itself, not of netlro; see
	// gvisorFdbasedLeak.
	leakedGoroutines int
}

// gvisorFdbasedLeak is how many goroutines gVisor's fdbased leaks per fd
// of a socket with processors: createInboundDispatcher first builds a
// readv dispatcher, whose processorManager starts its processor goroutines
// when there are more than one, and then replaces it by a recvmmsg
// dispatcher without closing it, so they wait forever (with its eventfd).
func gvisorFdbasedLeak(processors int) int {
	if processors == 0 {
		processors = max(1, runtime.GOMAXPROCS(0))
	}
	if processors < 2 {
		return 0
	}
	return processors
}

// tdLowers are the rows: every lower endpoint netlro's users put under
// lroendpoint.
func tdLowers() []tdLower {
	return []tdLower{
		{name: "fdbased-recvmmsg", setup: socketpairRows(newOurSocketEndpoint)},
		{name: "fdbased-read", setup: tapRows(false, fdbased.SourceRead)},
		{name: "fdbased-iouring", setup: tapRows(false, fdbased.SourceIOUring)},
		{name: "fdbased-auto", setup: tapRows(false, fdbased.SourceAuto)},
		{name: "fdbased-vnethdr", setup: tapRows(true, fdbased.SourceAuto)},
		{name: "gvisor-fdbased", setup: socketpairRows(newGVisorEndpoint(0)), leakedGoroutines: gvisorFdbasedLeak(0)},
		{name: "gvisor-fdbased-1proc", setup: socketpairRows(newGVisorEndpoint(1))},
		{name: "channel", setup: channelRows},
	}
}

// newOurSocketEndpoint is this project's fdbased on a SOCK_SEQPACKET
// socket: recvmmsg.
func newOurSocketEndpoint(fd int) (stack.LinkEndpoint, error) {
	return fdbased.New(&fdbased.Options{FDs: []int{fd}, MTU: tdMTU})
}

// newGVisorEndpoint returns a constructor of gVisor's fdbased on a
// socket, reading with recvmmsg, with processors per fd (0: gVisor's
// default, one per CPU).
func newGVisorEndpoint(processors int) func(fd int) (stack.LinkEndpoint, error) {
	return func(fd int) (stack.LinkEndpoint, error) {
		return gfdbased.New(&gfdbased.Options{
			FDs:                  []int{fd},
			MTU:                  tdMTU,
			PacketDispatchMode:   gfdbased.RecvMMsg,
			ProcessorsPerChannel: processors,
		})
	}
}

// newPeerSocketEndpoint is the peer of a socketpair row: gVisor's fdbased
// with one processor, which delivers on its dispatch goroutine and so
// leaks none (see gvisorFdbasedLeak).
var newPeerSocketEndpoint = newGVisorEndpoint(1)

// socketpairRows returns the setup of a row over a SOCK_SEQPACKET
// socketpair: newRx on one end, the peer on the other.
func socketpairRows(newRx func(fd int) (stack.LinkEndpoint, error)) func(t *testing.T) func(i int) (*tdLink, error) {
	return func(t *testing.T) func(i int) (*tdLink, error) {
		return func(int) (*tdLink, error) { return newSocketpairLink(newRx) }
	}
}

// newSocketpairLink makes a socketpair and the two endpoints on it.
func newSocketpairLink(newRx func(fd int) (stack.LinkEndpoint, error)) (*tdLink, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	closeFDs := func() {
		unix.Close(fds[0])
		unix.Close(fds[1])
	}
	rx, err := newRx(fds[0])
	if err != nil {
		closeFDs()
		return nil, err
	}
	peer, err := newPeerSocketEndpoint(fds[1])
	if err != nil {
		rx.Close()
		closeFDs()
		return nil, err
	}
	l := &tdLink{rx: rx, peer: peer}
	l.ours, _ = rx.(*fdbased.Endpoint)
	l.release = func(hung bool) error {
		if !hung {
			closeFDs()
		}
		return nil
	}
	return l, nil
}

// tapRows returns the setup of a row of this project's fdbased on a TAP
// device: the receiver's TAP and the peer's, both in a bridge, in a
// network namespace made for the row. vnet opens the receiver's TAP with
// IFF_VNET_HDR and its offloads on (Options.VNetHdr); src is how it is
// read (Options.Source). The peer is gVisor's fdbased on its own TAP.
//
// The two TAP devices serve iteration after iteration, as a NIC outlives
// its netstacks: what an iteration's stacks left in flight reaches the
// next one's, which resets it. Only after a hang, whose endpoint keeps
// its fd, does the next iteration get a new pair.
func tapRows(vnet bool, src fdbased.Source) func(t *testing.T) func(i int) (*tdLink, error) {
	return func(t *testing.T) func(i int) (*tdLink, error) {
		if err := tapns.Check(); err != nil {
			t.Skipf("skipping: TAP devices in a network namespace: %v", err)
		}
		if src == fdbased.SourceIOUring {
			if err := probeURing(); err != nil {
				t.Skipf("skipping: io_uring: %v", err)
			}
		}
		p := &tapPair{ns: newBridgeNamespace(t), vnet: vnet, rxFD: -1, peerFD: -1}
		t.Cleanup(p.close)
		return func(i int) (*tdLink, error) { return p.link(i, src) }
	}
}

// tapPair is a row's two TAP devices in its namespace's bridge.
type tapPair struct {
	ns           *tapns.Namespace
	vnet         bool
	rxFD, peerFD int // -1 when a new pair is needed
}

// open opens a new pair, named after iteration i, and puts it in the
// bridge.
func (p *tapPair) open(i int) error {
	rxName, peerName := fmt.Sprintf("tdr%d", i), fmt.Sprintf("tdp%d", i)
	err := p.ns.Do(func() error {
		var err error
		if p.rxFD, err = tapns.OpenTAP(rxName, p.vnet); err != nil {
			return err
		}
		p.peerFD, err = tapns.OpenTAP(peerName, false)
		return err
	})
	if err == nil {
		err = ipBatch(p.ns.Name, "link set dev "+rxName+" master br0 up", "link set dev "+peerName+" master br0 up")
	}
	if err != nil {
		p.close()
	}
	return err
}

// close closes the pair's fds, which removes the devices.
func (p *tapPair) close() {
	for _, fd := range []*int{&p.rxFD, &p.peerFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// link makes iteration i's endpoints on the pair, opening a new pair
// first if the last one was left to a hung endpoint.
func (p *tapPair) link(i int, src fdbased.Source) (*tdLink, error) {
	if p.rxFD < 0 {
		if err := p.open(i); err != nil {
			return nil, err
		}
	}
	rx, err := fdbased.New(&fdbased.Options{
		FDs:            []int{p.rxFD},
		MTU:            tdMTU,
		EthernetHeader: true,
		Address:        tdMACRx,
		Source:         src,
		VNetHdr:        p.vnet,
	})
	if err != nil {
		return nil, err
	}
	peer, err := gfdbased.New(&gfdbased.Options{
		FDs:                  []int{p.peerFD},
		MTU:                  tdMTU,
		EthernetHeader:       true,
		Address:              tdMACPeer,
		ProcessorsPerChannel: 1,
	})
	if err != nil {
		rx.Close()
		return nil, err
	}
	return &tdLink{
		rx:       rx,
		peer:     peer,
		ethernet: true,
		ours:     rx,
		release: func(hung bool) error {
			if hung {
				// Left open to what hung; the next iteration
				// opens a new pair.
				p.rxFD, p.peerFD = -1, -1
			}
			return nil
		},
	}, nil
}

// newBridgeNamespace makes a network namespace with a bridge br0 in it,
// removed when t ends. tapns gives it a TAP device of its own, unused.
func newBridgeNamespace(t *testing.T) *tapns.Namespace {
	t.Helper()
	name := fmt.Sprintf("netlro-td-%d-%s", testPid(), strings.ReplaceAll(t.Name()[strings.LastIndex(t.Name(), "/")+1:], "-", ""))
	ns, err := tapns.New(t.Context(), tapns.Config{Name: name, IfName: "tdstub"})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Close()) })
	// No IPv6 in the namespace: the kernel would send router and
	// listener messages into the bridge at every new port. Best effort.
	_ = ns.Do(func() error {
		for _, c := range []string{"all", "default"} {
			os.WriteFile("/proc/sys/net/ipv6/conf/"+c+"/disable_ipv6", []byte("1"), 0)
		}
		return nil
	})
	require.NoError(t, ipBatch(ns.Name, "link add br0 type bridge", "link set br0 up"))
	return ns
}

// ipBatch runs ip's commands cmds in the namespace ns with one ip
// process.
func ipBatch(ns string, cmds ...string) error {
	cmd := exec.Command("ip", "-n", ns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s: %q: %w: %s", ns, cmds, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// probeURing reports why this project's fdbased cannot read with
// io_uring here, or nil: New refuses SourceIOUring where its probe finds
// io_uring unavailable, and a ring that fails to be set up falls back to
// read(2), so this reads one frame from a pipe and checks that it came
// through the ring.
func probeURing() error {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(p[1])
	defer unix.Close(p[0])
	e, err := fdbased.New(&fdbased.Options{FDs: []int{p[0]}, MTU: tdMTU, Source: fdbased.SourceIOUring})
	if err != nil {
		return err
	}
	e.Attach(discardDispatcher{})
	defer func() {
		e.Close()
		e.Wait()
	}()
	frame := make([]byte, 40)
	frame[0] = 0x45 // IPv4
	if _, err := unix.Write(p[1], frame); err != nil {
		return err
	}
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if e.Stats().RingBatches > 0 {
			return nil
		}
	}
	if e.Stats().Frames > 0 {
		return errors.New("this project's fdbased fell back to read(2) (Linux before 6.7, or io_uring disabled)")
	}
	return errors.New("a frame written to a pipe was not read in 2s")
}

// discardDispatcher drops what it is given; the endpoint releases it.
type discardDispatcher struct{}

func (discardDispatcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}
func (discardDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer)    {}

// channelRows is the setup of the row of gVisor's channel.Endpoint: two
// of them, and two goroutines that carry what each stack writes into the
// other's InjectInbound.
func channelRows(*testing.T) func(i int) (*tdLink, error) {
	return func(int) (*tdLink, error) {
		rx, peer := channel.New(1024, tdMTU, ""), channel.New(1024, tdMTU, "")
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		return &tdLink{
			rx:   rx,
			peer: peer,
			start: func() {
				wg.Go(func() { pumpChannel(ctx, peer, rx) })
				wg.Go(func() { pumpChannel(ctx, rx, peer) })
			},
			release: func(hung bool) error {
				cancel()
				if hung {
					return nil // a pump may be stuck in the hung stack
				}
				if err := runBounded(10*time.Second, wg.Wait); err != nil {
					return fmt.Errorf("channel pumps: %w", err)
				}
				// Both stacks closed their endpoints, which drained
				// what was left queued; this catches a stack that
				// did not.
				rx.Close()
				peer.Close()
				return nil
			},
		}, nil
	}
}

// pumpChannel moves packets that one stack wrote to from into to, as a
// wire would, until ctx is done or from is closed.
func pumpChannel(ctx context.Context, from, to *channel.Endpoint) {
	for {
		pkt := from.ReadContext(ctx)
		if pkt == nil {
			return
		}
		v := pkt.ToView()
		proto := pkt.NetworkProtocolNumber
		pkt.DecRef()
		in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithView(v)})
		to.InjectInbound(proto, in)
		in.DecRef()
	}
}
