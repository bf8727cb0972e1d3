package fdbased

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/internal/bench/tapns"
	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
	"github.com/netlro/netlro/lroendpoint"
)

// The kernel stream test's addresses exist only inside the network namespace it
// creates: the kernel side of the TAP device, and the netstack behind
// this endpoint.
var (
	kernelAddr = "10.213.0.1"
	stackAddr  = tcpip.AddrFrom4([4]byte{10, 213, 0, 2})
	netPrefix  = 24
)

// transferLimit bounds the kernel stream test's TCP transfer, a hang
// guard.
const transferLimit = 2 * time.Minute

// netnsSeq numbers the namespaces this process creates.
var netnsSeq atomic.Uint32

// requireNetAdmin skips the test unless it can create network namespaces
// and TAP devices.
func requireNetAdmin(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("skipping: no TAP devices: %v", err)
	}
	const capNetAdmin, capSysAdmin = 12, 21
	caps, err := effectiveCaps()
	if err != nil {
		t.Skipf("skipping: cannot read capabilities: %v", err)
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{capNetAdmin, "CAP_NET_ADMIN"}, {capSysAdmin, "CAP_SYS_ADMIN"}} {
		if caps&(1<<c.bit) == 0 {
			t.Skipf("skipping: needs %s to create a network namespace and a TAP device (run as root)", c.name)
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("skipping: needs iproute2's ip: %v", err)
	}
}

// effectiveCaps returns the process's effective capability set.
func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, fmt.Errorf("no CapEff in /proc/self/status")
}

// ip runs iproute2's ip with args.
func ip(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
}

// newNetns creates a network namespace, deleted when the test ends, and
// returns its name and an fd for unix.Setns.
func newNetns(t *testing.T) (string, int) {
	t.Helper()
	name := fmt.Sprintf("netlro-fdbased-%d-%d", os.Getpid(), netnsSeq.Add(1))
	ip(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return name, fd
}

// inNetns runs f on an OS thread that has entered the network namespace
// nsFD, so that what f creates (devices, sockets) belongs there. The thread
// ends with f; it is never used for anything else.
func inNetns[T any](nsFD int, f func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Locked and never unlocked: the runtime ends the thread
		// when this goroutine returns.
		runtime.LockOSThread()
		var r result
		if r.err = unix.Setns(nsFD, unix.CLONE_NEWNET); r.err == nil {
			r.v, r.err = f()
		}
		ch <- r
	}()
	r := <-ch
	return r.v, r.err
}

// openTUNTAP creates the TAP (IFF_TAP) or TUN (IFF_TUN) device name,
// without packet information (IFF_NO_PI), in the current thread's network
// namespace and returns its fd. The device lives as long as the fd. With
// IFF_VNET_HDR in mode, it also turns on the device's checksum and TSO
// offloads, so that the kernel's TCP sends super-packets through it.
func openTUNTAP(name string, mode uint16) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	ifr.SetUint16(mode | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if mode&unix.IFF_VNET_HDR != 0 {
		if err := tapns.SetTSO(fd, true); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w", name, err)
		}
	}
	return fd, nil
}

// kernelLink sets up, in the network namespace ns (nsFD), the device the
// kernel sends through, with the kernel's address on it, and returns the
// fds the endpoint reads: a TAP device's, or AF_PACKET sockets' on the far
// end of a veth pair. It also says whether those fds are sockets and
// whether the kernel leaves checksums to be filled in (a veth's
// CHECKSUM_PARTIAL), so that the endpoint must report RX checksum offload,
// as gVisor's runsc does over AF_PACKET.
type kernelLink struct {
	name      string
	open      func(t *testing.T, ns string, nsFD int) []int
	ethernet  bool // frames carry an Ethernet header
	isSocket  bool
	rxOffload bool
	source    Source // Options.Source
	noRing    bool   // New's io_uring probe says no, as a seccomp profile would
	vnet      bool   // Options.VNetHdr, the device sends TCP super-packets
}

var kernelLinks = []kernelLink{
	{name: "tap", open: openTUNTAPLink("tap0", unix.IFF_TAP), ethernet: true},
	{name: "tun", open: openTUNTAPLink("tun0", unix.IFF_TUN)},
	{name: "tap-read", open: openTUNTAPLink("tap0", unix.IFF_TAP), ethernet: true, source: SourceRead},
	{name: "tun-read", open: openTUNTAPLink("tun0", unix.IFF_TUN), source: SourceRead},
	{name: "tap-noring", open: openTUNTAPLink("t22tap0", unix.IFF_TAP), ethernet: true, noRing: true},
	{name: "tap-tso", open: openTUNTAPLink("tap0", unix.IFF_TAP|unix.IFF_VNET_HDR), ethernet: true, vnet: true},
	{name: "tun-tso", open: openTUNTAPLink("tun0", unix.IFF_TUN|unix.IFF_VNET_HDR), vnet: true},
	{name: "af_packet", open: openPacketLink(1), ethernet: true, isSocket: true, rxOffload: true},
	{name: "af_packet-fanout", open: openPacketLink(2), ethernet: true, isSocket: true, rxOffload: true},
}

// openTUNTAPLink returns a kernelLink.open that creates TAP or TUN device
// dev in the namespace (see openTUNTAP) and gives the kernel its address
// on it.
func openTUNTAPLink(dev string, mode uint16) func(t *testing.T, ns string, nsFD int) []int {
	return func(t *testing.T, ns string, nsFD int) []int {
		fd, err := inNetns(nsFD, func() (int, error) { return openTUNTAP(dev, mode) })
		require.NoError(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		ip(t, "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", kernelAddr, netPrefix), "dev", dev)
		ip(t, "-n", ns, "link", "set", dev, "up")
		return []int{fd}
	}
}

// openPacketLink returns a kernelLink.open that creates veth pair veth0
// (the kernel's, with its address) and veth1 (with the endpoint's MAC) in
// the namespace, and returns n AF_PACKET sockets bound to veth1, which New
// puts in one fanout group. veth0 sends one segment per skb (gso_max_segs
// 1): a GSO packet would reach the socket as one frame past the MTU, which
// the endpoint drops.
func openPacketLink(n int) func(t *testing.T, ns string, nsFD int) []int {
	return func(t *testing.T, ns string, nsFD int) []int {
		setupVeth(t, ns)
		var fds []int
		for range n {
			fds = append(fds, openPacketSocket(t, nsFD, "veth1"))
		}
		return fds
	}
}

// setupVeth creates veth0 and veth1 in the namespace; see openPacketLink.
func setupVeth(t *testing.T, ns string) {
	ip(t, "-n", ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
	ip(t, "-n", ns, "link", "set", "veth0", "gso_max_segs", "1")
	ip(t, "-n", ns, "link", "set", "veth1", "address", net.HardwareAddr(ourMAC).String())
	ip(t, "-n", ns, "addr", "add", fmt.Sprintf("%s/%d", kernelAddr, netPrefix), "dev", "veth0")
	ip(t, "-n", ns, "link", "set", "veth1", "up")
	ip(t, "-n", ns, "link", "set", "veth0", "up")
}

// openPacketSocket returns an AF_PACKET socket bound to dev in the
// namespace nsFD, closed when the test ends.
func openPacketSocket(t *testing.T, nsFD int, dev string) int {
	fd, err := inNetns(nsFD, func() (int, error) {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return -1, err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return -1, err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return -1, err
		}
		return fd, nil
	})
	require.NoError(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// htons converts a 16-bit value to network byte order.
func htons(v uint16) uint16 {
	return v<<8 | v>>8
}

// streamSize is how many bytes a kernel stream test sends: less under the
// race detector, which slows netstack down.
func streamSize() int {
	if raceEnabled {
		return 4 << 20
	}
	return 32 << 20
}

// TestKernelStream has the Linux kernel send a TCP stream to a netstack
// behind this endpoint, over a TAP device or an AF_PACKET socket, inside a
// network namespace the test creates, and checks that every byte arrives.
func TestKernelStream(t *testing.T) {
	requireNetAdmin(t)
	size := streamSize()
	for _, kl := range kernelLinks {
		for _, withLRO := range []bool{true, false} {
			name := kl.name + "/bare"
			if withLRO {
				name = kl.name + "/lroendpoint"
			}
			t.Run(name, func(t *testing.T) {
				testKernelStream(t, kl, withLRO, size)
			})
		}
	}
}

// kernelStack is a netstack on an Endpoint over kl's fds, in a network
// namespace of its own where the kernel has kernelAddr.
type kernelStack struct {
	nsFD int
	ep   *Endpoint
	lep  *lroendpoint.Endpoint // the engine around ep, withLRO
	s    *stack.Stack
}

// newKernelStack builds the namespace, kl's link and a netstack with
// stackAddr on it, torn down when the test ends.
func newKernelStack(t *testing.T, kl kernelLink, withLRO bool) kernelStack {
	ns, nsFD := newNetns(t)
	ip(t, "-n", ns, "link", "set", "lo", "up")
	fds := kl.open(t, ns, nsFD)

	probe := probeURing
	if kl.noRing {
		probe = func() error { return errProbeRefused }
	}
	ep, err := newEndpointProbe(&Options{FDs: fds, MTU: 1500, EthernetHeader: kl.ethernet, Address: ourMAC, RXChecksumOffload: kl.rxOffload, Source: kl.source, VNetHdr: kl.vnet}, probe)
	require.NoError(t, err)
	require.Equal(t, kl.isSocket, ep.sys.links[0].isSocket, "read with recvmmsg if and only if a socket")
	for _, c := range ep.Sources() {
		require.Equal(t, kl.wantSource(), c.Source, "%v", c)
	}
	if len(fds) > 1 {
		// One PACKET_FANOUT_HASH group for all, so that a flow stays
		// on one socket.
		var groups []int
		for _, fd := range fds {
			g, err := unix.GetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT)
			require.NoError(t, err)
			groups = append(groups, g)
		}
		assert.Equal(t, unix.PACKET_FANOUT_HASH, groups[0]>>16&0xff, "fanout mode")
		for _, g := range groups[1:] {
			assert.Equal(t, groups[0]&0xffff, g&0xffff, "fanout group id")
		}
	}
	var nicEP stack.LinkEndpoint = ep
	var lep *lroendpoint.Endpoint
	if withLRO {
		lep, err = lroendpoint.New(ep, lro.Config{})
		require.NoError(t, err)
		nicEP = lep
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	t.Cleanup(func() {
		// Detach before netstack takes its lock to remove the NIC:
		// see the Endpoint.Attach doc.
		nicEP.Attach(nil)
		s.Close()
		s.Wait() // removes the NIC: Attach(nil) again, Wait, Close
		ep.Wait()
	})
	require.Nil(t, s.CreateNIC(1, nicEP))
	require.Nil(t, s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: stackAddr, PrefixLen: netPrefix},
	}, stack.AddressProperties{}))
	subnet := tcpip.AddressWithPrefix{Address: stackAddr, PrefixLen: netPrefix}.Subnet()
	s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: 1}})
	return kernelStack{nsFD: nsFD, ep: ep, lep: lep, s: s}
}

// received is what receiveStream read.
type received struct {
	n   int64
	sum [sha256.Size]byte
	err error
}

// receiveStream accepts one connection on ln and reads it to its end,
// hashing what it reads, until deadline. The result comes on the channel.
func receiveStream(ln net.Listener, deadline time.Time) <-chan received {
	got := make(chan received, 1)
	go func() {
		var r received
		defer func() { got <- r }()
		c, err := ln.Accept()
		if err != nil {
			r.err = err
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		h := sha256.New()
		r.n, r.err = io.Copy(h, c)
		copy(r.sum[:], h.Sum(nil))
	}()
	return got
}

func testKernelStream(t *testing.T, kl kernelLink, withLRO bool, size int) {
	ks := newKernelStack(t, kl, withLRO)
	nsFD, ep, lep, s := ks.nsFD, ks.ep, ks.lep, ks.s

	const port = 5201
	ln, err := gonet.ListenTCP(s, tcpip.FullAddress{NIC: 1, Addr: stackAddr, Port: port}, ipv4.ProtocolNumber)
	require.NoError(t, err)
	defer ln.Close()

	deadline := time.Now().Add(transferLimit)
	got := receiveStream(ln, deadline)

	payload := testpacket.Payload(5, size)
	want := sha256.Sum256(payload)
	conn, err := inNetns(nsFD, func() (net.Conn, error) {
		d := net.Dialer{Deadline: deadline}
		return d.Dial("tcp", net.JoinHostPort(stackAddr.String(), strconv.Itoa(port)))
	})
	if err != nil {
		ln.Close() // ends the Accept
		<-got
		require.NoError(t, err, "dial from the namespace")
	}
	conn.SetDeadline(deadline)
	_, werr := io.Copy(conn, bytes.NewReader(payload))
	if werr == nil {
		werr = conn.(*net.TCPConn).CloseWrite()
	}
	r := <-got
	conn.Close()
	require.NoError(t, werr, "kernel side send")
	require.NoError(t, r.err, "netstack side receive")
	require.Equal(t, int64(size), r.n)
	require.Equal(t, want, r.sum, "SHA-256 of the received bytes")

	st := ep.Stats()
	t.Logf("fdbased: %d frames in %d batches (%.1f per batch), dropped runt %d oversized %d not-for-us %d; %d written, %d write errors",
		st.Frames, st.Batches, st.MeanBatch(), st.DroppedRunt, st.DroppedOversized, st.DroppedNotForUs, st.Written, st.WriteErrors)
	assert.NotZero(t, st.Batches)
	assert.NotZero(t, st.Written, "netstack's ACKs and ARP replies went out through the endpoint")
	assert.Zero(t, st.DroppedOversized)
	for _, c := range ep.Sources() {
		t.Logf("fdbased: %v", c)
		assert.Equal(t, kl.wantSource(), c.Source, "after the stream: %v", c)
	}
	if kl.wantSource() == SourceIOUring {
		// A batch is counted before it is counted as a ring batch, and the
		// stream's end may reach us in between: wait for the count to
		// settle. A batch read any other way would never let them meet.
		assert.EventuallyWithT(t, func(c *assert.CollectT) {
			st := ep.Stats()
			assert.Equal(c, st.Batches, st.RingBatches, "every batch read through io_uring")
		}, 5*time.Second, 10*time.Millisecond)
	} else {
		assert.Zero(t, st.RingBatches)
	}
	assert.Zero(t, st.DroppedVNetHdr)
	if kl.vnet {
		assert.NotZero(t, st.GSOFrames, "the kernel sent TCP super-packets")
		t.Logf("fdbased: %d super-packets, %.0f bytes per frame", st.GSOFrames, float64(st.Bytes)/float64(st.Frames))
	} else {
		assert.Zero(t, st.GSOFrames)
	}
	if withLRO {
		ls := lep.Stats()
		t.Logf("lro: %+v", ls)
	}
}

// wantSource is the source kl's fds are read with: the one forced, else
// what SourceAuto picks here.
func (kl kernelLink) wantSource() Source {
	switch {
	case kl.source != SourceAuto:
		return kl.source
	case kl.isSocket:
		return SourceRecvmmsg
	case kl.vnet || kl.noRing || probeURing() != nil:
		return SourceRead
	}
	return SourceIOUring
}

// TestKernelStreamOut has netstack behind this endpoint send a TCP stream
// to the Linux kernel, over a TAP or TUN device, inside a network
// namespace the test creates, and checks that every byte arrives. Over a
// device with VNetHdr, netstack's TCP hands over packets of up to 64 KiB
// that the kernel segments (host GSO), so far fewer frames are written
// than segments sent.
func TestKernelStreamOut(t *testing.T) {
	requireNetAdmin(t)
	size := streamSize()
	for _, kl := range kernelLinks {
		if kl.isSocket || kl.source != SourceAuto || kl.noRing {
			continue // the same writes as "tap" and "tun"
		}
		t.Run(kl.name, func(t *testing.T) {
			ks := newKernelStack(t, kl, true)
			const port = 5202
			ln, err := inNetns(ks.nsFD, func() (net.Listener, error) {
				return net.Listen("tcp", net.JoinHostPort(kernelAddr, strconv.Itoa(port)))
			})
			require.NoError(t, err)
			defer ln.Close()

			deadline := time.Now().Add(transferLimit)
			got := receiveStream(ln, deadline)

			ctx, cancel := context.WithDeadline(t.Context(), deadline)
			defer cancel()
			remote := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(net.ParseIP(kernelAddr).To4()), Port: port}
			conn, err := gonet.DialContextTCP(ctx, ks.s, remote, ipv4.ProtocolNumber)
			if err != nil {
				ln.Close() // ends the Accept
				<-got
				require.NoError(t, err, "dial from netstack")
			}
			payload := testpacket.Payload(6, size)
			conn.SetDeadline(deadline)
			_, werr := io.Copy(conn, bytes.NewReader(payload))
			if werr == nil {
				werr = conn.CloseWrite()
			}
			r := <-got
			conn.Close()
			require.NoError(t, werr, "netstack side send")
			require.NoError(t, r.err, "kernel side receive")
			require.Equal(t, int64(size), r.n)
			require.Equal(t, sha256.Sum256(payload), r.sum, "SHA-256 of the received bytes")

			st := ks.ep.Stats()
			segments := uint64(size / 1448)
			t.Logf("fdbased: %d frames written for %d bytes (%d segments of 1448 bytes)", st.Written, size, segments)
			assert.Zero(t, st.WriteErrors)
			if kl.vnet {
				assert.Less(t, st.Written, segments/4, "netstack handed the kernel packets of many segments")
			} else {
				assert.GreaterOrEqual(t, st.Written, segments, "one frame per segment")
			}
		})
	}
}
