package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/internal/bench/cputime"
	"github.com/netlro/netlro/internal/bench/iperf"
	"github.com/netlro/netlro/internal/bench/iperf3"
	"github.com/netlro/netlro/internal/bench/tapns"
)

// runListen serves the iperf3 protocol from a netstack on an existing TAP
// device until ctx ends (Ctrl-C), printing netlro's counters after each
// test.
func runListen(ctx context.Context, o options, stdout io.Writer) error {
	if o.listen == "" || o.tapName == "" {
		return usageError{"-listen and -tap-name go together: -listen 192.0.2.2:5201 -tap-name tap0"}
	}
	ap, err := netip.ParseAddrPort(o.listen)
	if err != nil {
		return usageError{fmt.Sprintf("-listen %q: want address:port, e.g. 192.0.2.2:5201 or [2001:db8::2]:5201", o.listen)}
	}
	mode := iperf.ModeNetlro
	if o.mode != "" {
		if mode, err = iperf.ParseMode(o.mode); err != nil {
			return usageError{err.Error()}
		}
	}
	fd, err := tapns.OpenTAP(o.tapName, o.tso)
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return usageError{fmt.Sprintf("-tap-name %s: %v: needs root, or a TAP device made for this user (ip tuntap add %s mode tap user $USER)", o.tapName, err, o.tapName)}
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)

	var pcap io.Writer // a nil *os.File would not be a nil io.Writer
	if o.pcap != "" {
		f, err := os.Create(o.pcap)
		if err != nil {
			return fmt.Errorf("-pcap: %w", err)
		}
		defer f.Close()
		pcap = f
	}
	addr := tcpip.AddrFromSlice(ap.Addr().Unmap().AsSlice())
	link := iperf.LinkOptions{FD: fd, MTU: uint32(o.mtu), EthernetHeader: true, Address: netstackMAC, Source: o.source, VNetHdr: o.tso}
	rs, err := iperf.NewReceiverStack(mode, link, pcap, addr)
	if err != nil {
		return err
	}
	defer rs.Destroy()
	ln, err := iperf.ListenTCP(rs.Stack, addr, ap.Port(), 0)
	if err != nil {
		return err
	}

	fmt.Fprintf(stdout, "netstack-server: iperf3 server (%s) on %s, TAP device %s, MAC %s, MTU %d\n",
		mode, net.JoinHostPort(addr.String(), strconv.Itoa(int(ap.Port()))), o.tapName, net.HardwareAddr(netstackMAC), o.mtu)
	for _, c := range rs.Link.Sources() {
		fmt.Fprintf(stdout, "this project's fdbased reads %v\n", c)
	}
	fmt.Fprintf(stdout, "run: iperf3 -c %s -p %d   (Ctrl-C stops the server)\n", ap.Addr(), ap.Port())
	srv := iperf3.NewServer(iperf3.Options{
		Logf:      func(format string, args ...any) { fmt.Fprintf(stdout, format+"\n", args...) },
		CPUTime:   cputime.Process,
		OnTestEnd: func(t iperf3.Test) { printTest(stdout, t, rs) },
	})
	err = srv.Serve(ctx, ln)
	if ctx.Err() != nil {
		return nil // Ctrl-C is how the server ends
	}
	return err
}

// printTest prints one finished iperf3 test and the receiver's counters.
func printTest(w io.Writer, t iperf3.Test, rs *iperf.ReceiverStack) {
	dir := "client to netstack"
	if t.Reverse {
		dir = "netstack to client (-R)"
	}
	fmt.Fprintf(w, "test from %s: %s, %d stream(s), %s in %.2fs, %s\n",
		t.Remote, dir, t.Streams, humanBytes(t.Bytes), t.Duration.Seconds(), bitrate(t.Gbps()))
	fmt.Fprintf(w, "  netstack: %d IP packets received since start\n", rs.Stack.Stats().IP.PacketsReceived.Value())
	if st, ok := rs.Link.LROStats(); ok {
		fmt.Fprintf(w, "  netlro since start: %s\n", indent(st.String()))
	}
	if st, ok := rs.Link.FDStats(); ok {
		fmt.Fprintf(w, "  fdbased since start: %d frames in %d batches (%.1f per batch), %d TCP super-packets\n", st.Frames, st.Batches, st.MeanBatch(), st.GSOFrames)
	}
}
