package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/netlro/netlro/internal/bench/iperf"
)

// table prints rows as they finish, like iperf3's summary lines, or
// collects them for one JSON document.
type table struct {
	w        io.Writer
	json     bool
	tw       *tabwriter.Writer
	terminal bool // w is a terminal: show a progress line
	desc     string
	// base is the netstack row, once it has run: every row's ratios are
	// to it, so that a reader need not work them out.
	base *iperf.Result
}

func newTable(w io.Writer, asJSON bool) *table {
	t := &table{w: w, json: asJSON}
	if f, ok := w.(*os.File); ok && !asJSON {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			t.terminal = true
		}
	}
	return t
}

func (t *table) header(desc string) {
	t.desc = desc
	if t.json {
		return
	}
	fmt.Fprintf(t.w, "netstack-server: %s\n", desc)
	fmt.Fprintf(t.w, "%s/%s, %d CPUs, %s\n\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), time.Now().UTC().Format("2006-01-02"))
	t.tw = tabwriter.NewWriter(t.w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(t.tw, "mode\t  transfer\t  seconds\t  bitrate\t  CPU s/GB\t  sender s/GB\t  packets/GB\t  seg/pkt\t  rate x\t  CPU x\t  SHA-256\t")
}

// progress returns the progress callback of one row: a line rewritten in
// place on a terminal, nothing otherwise.
func (t *table) progress(m iperf.Mode) func(int64) {
	if !t.terminal {
		return nil
	}
	start := time.Now()
	return func(n int64) {
		secs := time.Since(start).Seconds()
		fmt.Fprintf(t.w, "\r%-15s %s  %.1fs  %s ", m, humanBytes(n), secs, bitrate(float64(n)*8/secs/1e9))
	}
}

func (t *table) clearProgress() {
	if t.terminal {
		fmt.Fprintf(t.w, "\r%s\r", strings.Repeat(" ", 60))
	}
}

// row prints one finished row. The table is aligned as a whole, so rows
// show up one by one only on a terminal, where each is flushed.
func (t *table) row(r iperf.Result) {
	if t.json {
		return
	}
	segs := "-"
	if r.LRO != nil {
		segs = fmt.Sprintf("%.1f", r.LRO.MergeRatio())
	}
	sha := "yes"
	if !r.Verified {
		sha = "NO"
	}
	sender := "-"
	if r.Sent.CPUSeconds > 0 {
		sender = fmt.Sprintf("%.2f", r.SenderCPUPerGB())
	}
	if r.Mode == iperf.ModeNetstack {
		t.base = &r
	}
	rate, cpu := "-", "-"
	if t.base != nil {
		rate = ratio(r.Gbps(), t.base.Gbps())
		cpu = ratio(r.CPUPerGB(), t.base.CPUPerGB())
	}
	fmt.Fprintf(t.tw, "%s\t  %s\t  %.2f\t  %s\t  %.2f\t  %s\t  %s\t  %s\t  %s\t  %s\t  %s\t\n",
		r.Mode, humanBytes(r.Bytes), r.Seconds, bitrate(r.Gbps()), r.CPUPerGB(), sender, humanCount(r.PacketsPerGB()), segs, rate, cpu, sha)
	if t.terminal {
		t.tw.Flush()
	}
}

// finish prints the JSON document or the table's footer.
func (t *table) finish(results []iperf.Result) error {
	if t.json {
		enc := json.NewEncoder(t.w)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Description string         `json:"description"`
			Results     []iperf.Result `json:"results"`
		}{t.desc, results})
	}
	t.tw.Flush()
	fmt.Fprint(t.w, legend)
	t.sources(results)
	engines := false
	for _, r := range results {
		if r.LRO != nil {
			if !engines {
				fmt.Fprint(t.w, engineLegend)
				engines = true
			}
			fmt.Fprintf(t.w, "\n%s engine: %s\n", r.Mode, indent(r.LRO.String()))
		}
	}
	for _, r := range results {
		if !r.Verified {
			return fmt.Errorf("%s: received data differs from what was sent", r.Mode)
		}
	}
	return nil
}

// sources prints how this project's fdbased read its fd in each of its
// rows, and why, once per distinct choice.
func (t *table) sources(results []iperf.Result) {
	var lines []string
	for _, r := range results {
		for _, c := range r.Sources {
			line := fmt.Sprintf("%s (%s)", c.Source, c.Why)
			if !slices.Contains(lines, line) {
				lines = append(lines, line)
			}
		}
	}
	for _, line := range lines {
		fmt.Fprintf(t.w, "\nthis project's fdbased read with %s\n", line)
	}
}

// legend explains the table's columns, and which of its figures to trust.
const legend = `
CPU s/GB: the receiving process's CPU time (user+system) per 10^9 bytes received; sender s/GB:
the same for the sending process; packets/GB: IP packets into the receiver's netstack per 10^9
bytes; seg/pkt: segments per packet netlro delivered; rate x, CPU x: the row's bitrate and its
CPU s/GB divided by the netstack row's (gVisor's fdbased alone, no offload).
CPU x is the steady figure: it moves little from run to run. The bitrates depend on how fast the
sender and the shared machine run at that moment, netstack alone's most of all, so rate x moves
much more between runs; read it as a rough figure.
`

// engineLegend explains the engine counter lines printed under the table
// (lro.Stats.String).
const engineLegend = `
Engine counters of each netlro row (lro.Stats): in: packets the reader handed to the engine;
out: packets delivered to netstack; merged S segments into P packets (in/out per packet).
flush: why held packets were delivered: batch (the reader ended a batch), limit (MaxSegments or
MaxBytes reached), order (a packet of the flow that cannot merge came), mismatch (a segment whose
headers differ), evict (the flow table was full), timer (FlushDelay passed with no batch end).
pass: packets delivered unchanged, by reason: tcp-flags (no payload, or SYN, FIN, RST, URG, ECE,
CWR, no ACK, CE mark), out-of-order (not the next sequence number), tcp-options, bad-checksum, ...
drop: only with ClaimChecksumOffload, packets whose checksums failed or could not be checked.
`

// ratio formats a/b as a factor, or "-" when b is zero.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func indent(s string) string { return strings.ReplaceAll(s, "\n", "\n  ") }

// humanBytes formats n like iperf3's transfer column.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GBytes", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MBytes", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.1f KBytes", float64(n)/(1<<10))
	}
}

func bitrate(gbps float64) string {
	if gbps < 1 {
		return fmt.Sprintf("%.0f Mbits/sec", gbps*1000)
	}
	return fmt.Sprintf("%.2f Gbits/sec", gbps)
}

func humanCount(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	default:
		return fmt.Sprintf("%.0f", v)
	}
}
