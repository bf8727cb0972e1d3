// Command netstack-server measures TCP transfers into gVisor's netstack with
// and without netlro, the way iperf3 would.
//
// With no arguments it runs an in-process comparison: two netstacks joined
// by a unix SOCK_SEQPACKET socketpair (MTU 1500), the sender (gVisor's
// fdbased, GSO off) in a child process so that the CPU time measured is the
// receiver's alone, and one row per receiver link endpoint:
//
//	netstack        gVisor's fdbased, no offload
//	gvisor-gro      gVisor's fdbased with GRO and RXChecksumOffload
//	fdbased         this project's fdbased, no LRO
//	netlro          this project's fdbased wrapped by lroendpoint
//	netlro-reseg    the same with lro.Config{Resegmentable: true}
//	netlro-offload  the same with lro.Config{ClaimChecksumOffload: true}
//	netlro-gvisor   gVisor's fdbased wrapped by lroendpoint: timer flush only
//	netlro-inject   one PacketBuffer per packet into lroendpoint, Flush at
//	                each batch end: a channel endpoint fed in its owner's batches
//	netlro-inject-timer  the same without the batch-end Flush: timer only
//
// Every stream is a seeded pseudo-random byte stream whose SHA-256 the
// receiver compares with the sender's. Each row shows its bitrate and its
// CPU time per GB as ratios to the netstack row; the CPU ratio is the
// steady one, as the legend printed under the table says, and the engine
// counter lines under it say why held packets left and why others passed.
//
// -soak runs many flows both ways over an impaired link in this process,
// tearing both stacks down under traffic and building them again every
// few seconds, and reports bytes moved and wrong, stalls, hangs, and heap,
// goroutines and RSS at start and end (soak.go).
//
// -tap (root) has the Linux kernel's TCP send instead, from a network
// namespace through a TAP device; with -tso the device takes the kernel's
// TCP super-packets (TSO) and this project's rows read them whole. -listen
// with -tap-name serves the iperf3
// protocol on an existing TAP device, so that an unmodified iperf3 -c
// measures netstack with netlro.
//
// Usage:
//
//	netstack-server [-time 3s | -bytes 1G] [-mode M] [-streams N] [-ipv6]
//	                [-mtu 1500] [-impair PROFILE] [-json] [-cpuprofile F] [-pcap F]
//	netstack-server -tap [-source S | -tso] [-cc cubic] [same flags]
//	netstack-server -listen 192.0.2.2:5201 -tap-name tap0 [-mode M]
//	netstack-server -soak 10m [-soak-cycle 3s] [-soak-stream 2M] [-soak-hang 10s]
//	                [-streams 8] [-mode netlro] [-impair mixed] [-v] [-json]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netlro/netlro/fdbased"
	"github.com/netlro/netlro/internal/bench/iperf"
)

// exitUsage is the exit code for a wrong command line or a missing
// privilege, as flag uses.
const exitUsage = 2

// options are the parsed command line.
type options struct {
	duration   time.Duration
	bytes      int64
	mode       string
	streams    int
	ipv6       bool
	mtu        uint
	impair     string
	json       bool
	cpuprofile string
	pcap       string
	seed       uint64
	tap        bool
	source     fdbased.Source
	tso        bool
	cc         string
	listen     string
	tapName    string
	repeat     int
	soak       soakOptions
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-"+senderFlag {
		os.Exit(runSenderChild())
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the command line args, printing results to stdout and errors
// to stderr, and returns the exit code.
func run(args []string, stdout, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("netstack-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "time", 3*time.Second, "how long each row sends (ignored with -bytes)")
	bytesFlag := fs.String("bytes", "", "bytes each row sends, over all streams (e.g. 512M, 2G); overrides -time")
	fs.StringVar(&o.mode, "mode", "", "run one row: "+modeNames())
	fs.IntVar(&o.streams, "streams", 1, "parallel TCP connections")
	fs.BoolVar(&o.ipv6, "ipv6", false, "use IPv6 instead of IPv4")
	fs.UintVar(&o.mtu, "mtu", iperf.DefaultMTU, "link MTU")
	fs.StringVar(&o.impair, "impair", "", "impair the in-process link: "+profileNames())
	fs.BoolVar(&o.json, "json", false, "print results as JSON")
	fs.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of the receiving process to `file`")
	fs.StringVar(&o.pcap, "pcap", "", "capture what the receiver's netstack receives (after merging) to `file`; with several rows, one file per row")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the pseudo-random payload")
	fs.BoolVar(&o.tap, "tap", false, "the Linux kernel's TCP sends, from a network namespace through a TAP device (root)")
	sourceFlag := fs.String("source", "auto", "with -tap: how this project's fdbased reads the TAP device: auto (io_uring where the kernel allows it, else read; read with -tso), read (one read(2) per frame) or io_uring (one system call per batch)")
	fs.BoolVar(&o.tso, "tso", false, "with -tap or -listen: the TAP device takes TCP super-packets (IFF_VNET_HDR, TSO on), read by this project's fdbased with VNetHdr; its rows only")
	fs.StringVar(&o.cc, "cc", "cubic", "with -tap: the kernel sender's TCP congestion control (TCP_CONGESTION on its sockets; Linux's default is cubic, whatever the machine's sysctl says)")
	fs.StringVar(&o.listen, "listen", "", "serve the iperf3 protocol at `addr:port` on the TAP device -tap-name")
	fs.StringVar(&o.tapName, "tap-name", "", "existing TAP device for -listen")
	fs.IntVar(&o.repeat, "repeat", 0, "run the table (or -mode's row) `N` times and report each row's spread and stalls (runs below a quarter of its median)")
	fs.DurationVar(&o.soak.duration, "soak", 0, "run a soak for this long (whole cycles) instead of the table: many flows both ways over an impaired link, both stacks torn down under traffic and rebuilt every -soak-cycle")
	fs.DurationVar(&o.soak.cycle, "soak-cycle", 3*time.Second, "with -soak: traffic time between two teardowns")
	fs.DurationVar(&o.soak.hang, "soak-hang", 10*time.Second, "with -soak: a teardown taking longer is a hang (goroutine dump, exit code 1)")
	soakStream := fs.String("soak-stream", "2M", "with -soak: largest stream; sizes are drawn from [1/16 of it, it]")
	fs.BoolVar(&o.soak.verbose, "v", false, "with -soak: a line per cycle")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "netstack-server: unexpected arguments %q\n", fs.Args())
		return exitUsage
	}
	src, perr := parseSource(*sourceFlag)
	if perr != nil {
		fmt.Fprintf(stderr, "netstack-server: -source: %v\n", perr)
		return exitUsage
	}
	o.source = src
	if *bytesFlag != "" {
		n, err := parseBytes(*bytesFlag)
		if err != nil {
			fmt.Fprintf(stderr, "netstack-server: -bytes: %v\n", err)
			return exitUsage
		}
		o.bytes = n
	}
	if o.soak.duration > 0 {
		if err := soakConfig(&o, fs, *soakStream); err != nil {
			fmt.Fprintf(stderr, "netstack-server: %v\n", err)
			return exitUsage
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var err error
	switch {
	case o.soak.duration > 0:
		err = runSoak(ctx, o.soak, stdout, stderr)
	case o.listen != "" || o.tapName != "":
		err = runListen(ctx, o, stdout)
	case o.repeat > 0:
		err = runRepeat(ctx, o, stdout)
	default:
		err = runTable(ctx, o, stdout)
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "netstack-server: %v\n", err)
		return exitUsage
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "netstack-server: interrupted")
		return 1
	default:
		fmt.Fprintf(stderr, "netstack-server: %v\n", err)
		return 1
	}
}

// usageError is a wrong command line or a missing privilege: exit code 2.
type usageError struct{ msg string }

// Error returns the message.
func (e usageError) Error() string { return e.msg }

// runTable runs the comparison rows and prints the table.
func runTable(ctx context.Context, o options, stdout io.Writer) error {
	cfg, modes, err := tableConfig(o)
	if err != nil {
		return err
	}
	if o.cpuprofile != "" {
		f, err := os.Create(o.cpuprofile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	env, closeEnv, err := newRunEnv(ctx, cfg, o)
	if err != nil {
		return err
	}
	defer closeEnv()
	out := newTable(stdout, o.json)
	out.header(env.describe(cfg, o))
	var results []iperf.Result
	for _, m := range modes {
		cfg := cfg
		cfg.Mode = m
		closePcap, err := openPcap(&cfg, o.pcap, len(modes) > 1)
		if err != nil {
			return err
		}
		cfg.Progress = out.progress(m)
		res, err := env.run(ctx, cfg)
		closePcap()
		out.clearProgress()
		if err != nil {
			return err
		}
		out.row(res)
		results = append(results, res)
	}
	return out.finish(results)
}

// soakConfig fills o.soak from the command line: -mode defaults to
// netlro, -impair to mixed, -streams to 8 in each direction.
func soakConfig(o *options, fs *flag.FlagSet, maxStream string) error {
	if o.tap || o.listen != "" || o.tapName != "" {
		return usageError{"-soak runs both stacks in this process; not with -tap or -listen"}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["streams"] {
		o.streams = 8
	}
	if o.mode == "" {
		o.mode = string(iperf.ModeNetlro)
	}
	if o.impair == "" {
		o.impair = "mixed"
	}
	cfg, modes, err := tableConfig(*o)
	if err != nil {
		return err
	}
	n, err := parseBytes(maxStream)
	if err != nil || n < 16 {
		return usageError{fmt.Sprintf("-soak-stream %s: want a byte count of at least 16", maxStream)}
	}
	if o.soak.cycle <= 0 || o.soak.hang <= 0 {
		return usageError{"-soak-cycle and -soak-hang: want positive durations"}
	}
	so := &o.soak
	so.maxStream, so.mode, so.profile = n, modes[0], cfg.Profile
	so.streams, so.ipv6, so.mtu, so.seed, so.json = o.streams, o.ipv6, uint32(o.mtu), o.seed, o.json
	if cfg.Profile.Streams > 0 {
		so.streams = cfg.Profile.Streams
	}
	return nil
}

// tableConfig turns the command line into a transfer config and the rows
// to run.
func tableConfig(o options) (iperf.Config, []iperf.Mode, error) {
	cfg := iperf.Config{
		IPv6: o.ipv6,
		MTU:  uint32(o.mtu),
		Send: iperf.SendOptions{Streams: o.streams, Bytes: o.bytes, Duration: o.duration, Seed: o.seed},
	}
	if o.streams < 1 {
		return cfg, nil, usageError{fmt.Sprintf("-streams %d: want at least 1", o.streams)}
	}
	if o.mtu < 1280 || o.mtu > 65535 {
		return cfg, nil, usageError{fmt.Sprintf("-mtu %d: want 1280 to 65535", o.mtu)}
	}
	if o.impair != "" {
		p, err := iperf.ParseProfile(o.impair)
		if err != nil {
			return cfg, nil, usageError{err.Error()}
		}
		if o.tap && p.Impairs() {
			return cfg, nil, usageError{"-impair " + o.impair + " changes frames on the in-process link; with -tap use tc netem in the namespace instead"}
		}
		cfg.Profile = p
	}
	modes := iperf.Modes
	if o.tso {
		if !o.tap {
			return cfg, nil, usageError{"-tso goes with -tap (or -listen): it is a TAP device's offload"}
		}
		if o.source == fdbased.SourceIOUring {
			return cfg, nil, usageError{"-tso with -source io_uring: this project's fdbased reads a virtio_net_hdr with read(2) only"}
		}
		// gVisor's fdbased reads a virtio_net_hdr only from a socket.
		modes = []iperf.Mode{iperf.ModeFdbased, iperf.ModeNetlro, iperf.ModeNetlroReseg, iperf.ModeNetlroOffload}
	}
	if o.mode != "" {
		m, err := iperf.ParseMode(o.mode)
		if err != nil {
			return cfg, nil, usageError{err.Error()}
		}
		if !slices.Contains(modes, m) {
			return cfg, nil, usageError{fmt.Sprintf("-mode %s with -tso: gVisor's fdbased reads no virtio_net_hdr from a TAP device", m)}
		}
		modes = []iperf.Mode{m}
	}
	return cfg, modes, nil
}

// runEnv is where the rows run: an in-process socketpair or a TAP device.
type runEnv interface {
	describe(cfg iperf.Config, o options) string
	run(ctx context.Context, cfg iperf.Config) (iperf.Result, error)
}

// newRunEnv returns where the rows run: a TAP device with -tap, else a
// socketpair; the caller calls closeEnv when done.
func newRunEnv(ctx context.Context, cfg iperf.Config, o options) (env runEnv, closeEnv func(), err error) {
	if !o.tap {
		return socketpairEnv{}, func() {}, nil
	}
	tenv, err := newTapEnv(ctx, cfg, o.cc, o.tso)
	if err != nil {
		return nil, nil, err
	}
	tenv.source = o.source
	return tenv, tenv.Close, nil
}

// parseSource returns the fdbased.Source named s: auto, read or io_uring.
func parseSource(s string) (fdbased.Source, error) {
	for _, src := range []fdbased.Source{fdbased.SourceAuto, fdbased.SourceRead, fdbased.SourceIOUring} {
		if s == src.String() {
			return src, nil
		}
	}
	return 0, fmt.Errorf("unknown source %q: want auto, read or io_uring", s)
}

// openPcap points cfg.Pcap at the capture file of cfg's row, if asked for.
func openPcap(cfg *iperf.Config, name string, perRow bool) (func(), error) {
	if name == "" {
		return func() {}, nil
	}
	if perRow {
		ext := ""
		if i := strings.LastIndexByte(name, '.'); i > strings.LastIndexByte(name, '/') {
			name, ext = name[:i], name[i:]
		}
		name = name + "-" + string(cfg.Mode) + ext
	}
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("-pcap: %w", err)
	}
	cfg.Pcap = f
	return func() { f.Close() }, nil
}

// parseBytes parses a byte count with an optional K, M or G suffix
// (powers of 1024, as iperf3 reads them).
func parseBytes(s string) (int64, error) {
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive byte count", s)
	}
	return n * mult, nil
}

func modeNames() string {
	names := make([]string, len(iperf.Modes))
	for i, m := range iperf.Modes {
		names[i] = string(m)
	}
	return strings.Join(names, ", ")
}

func profileNames() string {
	names := make([]string, len(iperf.Profiles))
	for i, p := range iperf.Profiles {
		names[i] = p.Name
	}
	return strings.Join(names, ", ")
}
