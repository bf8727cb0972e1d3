//go:build linux

// Command tunproxy is a transparent TCP proxy on gVisor's netstack with
// netlro, shaped like tun2socks: it reads the IP packets of a TUN device,
// accepts every TCP connection whatever its destination, dials that
// destination with the host's own stack, and relays the bytes both ways,
// half-closes included.
//
// Route traffic into the device (a namespace's default route, or a VM's
// or container's link) and the proxy carries it. -path chooses how
// packets reach netstack, so the ways users feed it can be compared on the
// same traffic:
//
//	netstack       gVisor's fdbased, readv, no offload (tun2socks on Linux)
//	gvisor-gro     the same with gVisor's GRO (and RXChecksumOffload)
//	netlro-gvisor  gVisor's fdbased wrapped by lroendpoint (timer flush)
//	netlro-read    this project's fdbased, read(2), batch-end flush
//	netlro-uring   the same reading with io_uring
//	netlro-vnet    the same on a device with IFF_VNET_HDR and TSO (default)
//
// On SIGINT or SIGTERM it prints its counters, netlro's, and its CPU time
// per GB relayed, and exits. SIGUSR1 turns netlro's merging off or on
// while traffic flows, for an A/B comparison in place; SIGUSR2 logs the
// live heap and the connections being relayed.
//
// Usage:
//
//	tunproxy -tun tun0 | -tun-fd 3 [-tun-netns /run/netns/NAME] [-path netlro-vnet]
//	         [-mtu 1500] [-max-flows 64] [-cpuprofile F] [-json] [-v]
//
// The device is created if it does not exist (and goes away with the
// proxy); configure its address, link state and routes with ip(8), or
// create it persistent beforehand (ip tuntap add dev tun0 mode tun).
// -tun-netns opens the device inside another network namespace, so that
// the proxy's own dials leave from its namespace while the device carries
// the other's traffic. -tun-fd takes a device another program opened and
// passed down (with IFF_VNET_HDR for the netlro-vnet path), or a
// SOCK_SEQPACKET socket carrying IP packets.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netlro/netlro/examples/tunproxy/proxy"
	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/internal/bench/cputime"
	"github.com/netlro/netlro/lro"
)

// exitUsage is the exit code for a wrong command line or a missing
// privilege, as flag uses.
const exitUsage = 2

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is main with its arguments and outputs, and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tunproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	tun := fs.String("tun", "", "TUN device `name` (created if missing)")
	tunFD := fs.Int("tun-fd", -1, "take the already open TUN device (or SOCK_SEQPACKET socket) `fd` the proxy inherited, as tun2socks's fd:// device, instead of -tun")
	netns := fs.String("tun-netns", "", "open the TUN device in the network namespace at `path` (e.g. /run/netns/NAME)")
	pathFlag := fs.String("path", string(proxy.DefaultPath), "receive `path` into netstack")
	mtu := fs.Uint("mtu", 1500, "the device's `MTU`")
	maxFlows := fs.Int("max-flows", proxy.DefaultMaxFlows, "netlro's flow table size (lro.Config.MaxFlows)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `file`")
	verbose := fs.Bool("v", false, "log failed dials and handshakes")
	jsonOut := fs.Bool("json", false, "print the exit report as JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	logger := log.New(stderr, "", log.LstdFlags)
	if (*tun == "") == (*tunFD < 0) || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "tunproxy: one of -tun and -tun-fd is required, and no arguments")
		fs.Usage()
		return exitUsage
	}
	path, err := proxy.ParsePath(*pathFlag)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	fd, name := *tunFD, fmt.Sprintf("fd %d", *tunFD)
	if fd < 0 {
		fd, name = -1, *tun
		fd, err = proxy.OpenTUNIn(*netns, *tun, path.VNetHdr())
		if err != nil {
			fmt.Fprintln(stderr, err)
			if errors.Is(err, proxy.ErrPrivilege) {
				return exitUsage
			}
			return 1
		}
	}
	defer unix.Close(fd)
	cfg := proxy.Config{FD: fd, Path: path, MTU: uint32(*mtu)}
	cfg.LRO.MaxFlows = *maxFlows
	if *verbose {
		cfg.Logf = logger.Printf
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(stderr, "tunproxy:", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(stderr, "tunproxy:", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}
	p, err := proxy.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	start := time.Now()
	cpu0 := cputime.Total()
	// The signals are caught before the line that says the proxy
	// relays, which a supervisor (or a test) may answer with one.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGUSR1, syscall.SIGUSR2)
	logger.Printf("tunproxy: relaying TCP from %s (path %s, pid %d)", name, path, os.Getpid())
	for sig := range sigs {
		if sig == syscall.SIGUSR2 {
			logMemory(logger, p)
			continue
		}
		if sig != syscall.SIGUSR1 {
			break
		}
		if p.SetMerging(!p.Merging()) {
			logger.Printf("tunproxy: merging %v", p.Merging())
		} else {
			logger.Printf("tunproxy: path %s has no netlro to switch", path)
		}
	}
	signal.Stop(sigs)
	endpoints := p.Endpoints() // what netstack held when told to stop
	p.Close()
	r := newReport(p, path, time.Since(start), cputime.Total()-cpu0)
	r.Endpoints = endpoints
	if *jsonOut {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintln(stderr, "tunproxy:", err)
			return 1
		}
		return 0
	}
	r.print(stdout)
	return 0
}

// Report is what the proxy prints when it exits.
type Report struct {
	Path       proxy.Path     `json:"path"`
	Wall       float64        `json:"wall_s"`
	CPU        float64        `json:"cpu_s"` // user and system
	CPUPerGB   float64        `json:"cpu_s_per_gb"`
	Proxy      proxy.Stats    `json:"proxy"`
	Endpoints  map[string]int `json:"endpoints"` // netstack's TCP endpoints by state when the proxy was told to stop
	LRO        *lro.Stats     `json:"lro,omitempty"`
	MergeRatio float64        `json:"merge_ratio,omitempty"` // packets in per packet out of netlro
	FD         *fdbased.Stats `json:"fdbased,omitempty"`
	// Sources says how this project's fdbased read the TUN device, and why.
	Sources []fdbased.SourceChoice `json:"sources,omitempty"`
}

// newReport collects the counters of p, which ran for wall using cpu.
func newReport(p *proxy.Proxy, path proxy.Path, wall, cpu time.Duration) Report {
	r := Report{Path: path, Wall: wall.Seconds(), CPU: cpu.Seconds(), Proxy: p.Stats()}
	if bytes := r.Proxy.BytesUp + r.Proxy.BytesDown; bytes > 0 {
		r.CPUPerGB = r.CPU / (float64(bytes) / 1e9)
	}
	if ls, ok := p.LROStats(); ok {
		r.LRO, r.MergeRatio = &ls, ls.MergeRatio()
	}
	if fs, ok := p.FDStats(); ok {
		r.FD = &fs
	}
	r.Sources = p.Sources()
	return r
}

// print writes r for a reader.
func (r Report) print(w io.Writer) {
	st := r.Proxy
	fmt.Fprintf(w, "path %s, %.1f s: %d connections relayed, %d refused (dial failed), %d handshakes failed\n", r.Path, r.Wall, st.Accepted, st.DialFailed, st.HandshakeFailed)
	fmt.Fprintf(w, "relayed %d bytes up, %d bytes down; %d relays ended by an error or a reset\n", st.BytesUp, st.BytesDown, st.Aborted)
	fmt.Fprintf(w, "at exit: %d connections dialing, %d relayed (%d half-closed); netstack endpoints: %s\n", st.Dialing, st.Active, st.HalfClosed, formatStates(r.Endpoints))
	ns := st.Netstack
	fmt.Fprintf(w, "%d SYNs deferred (their ports' endpoint about to go)\n", st.SYNsDeferred)
	fmt.Fprintf(w, "netstack: %d SYNs dropped (MaxInFlight dialing), %d resets sent, %d received, %d retransmits, %d timeouts\n", ns.SYNsDropped, ns.ResetsSent, ns.ResetsReceived, ns.Retransmits, ns.Timeouts)
	fmt.Fprintf(w, "CPU %.2f s, %.3f CPU s/GB relayed\n", r.CPU, r.CPUPerGB)
	if fs := r.FD; fs != nil {
		fmt.Fprintf(w, "fdbased: %d frames in %d batches (%.1f per batch), %d super-packets\n", fs.Frames, fs.Batches, fs.MeanBatch(), fs.GSOFrames)
	}
	for _, c := range r.Sources {
		fmt.Fprintf(w, "fdbased reads %v\n", c)
	}
	if r.LRO != nil {
		fmt.Fprintf(w, "netlro: %v\n", *r.LRO)
	}
}

// logMemory logs the connections being relayed and the live heap after a
// collection, so that an operator (or a test) can watch memory under
// load.
func logMemory(logger *log.Logger, p *proxy.Proxy) {
	// Twice: what sync.Pools hold (the relays' copy buffers, netstack's
	// chunks) survives one collection in their victim caches.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	st := p.Stats()
	eps := p.Endpoints()
	n := 0
	for _, c := range eps {
		n += c
	}
	logger.Printf("tunproxy: memory: %d connections active (%d half-closed), %d dialing, %d relayed; heap %d bytes live, %d goroutines, %d endpoints (%s)",
		st.Active, st.HalfClosed, st.Dialing, st.Accepted, ms.HeapAlloc, runtime.NumGoroutine(), n, formatStates(eps))
}

// formatStates writes endpoint counts by state, sorted by state, as
// "ESTABLISHED 3, TIME-WAIT 12", or "none".
func formatStates(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	var b strings.Builder
	for i, k := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}
