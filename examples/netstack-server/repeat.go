package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/netlro/netlro/internal/bench/iperf"
)

// runRepeat runs the table (or the row of -mode) o.repeat times and
// reports, per row, the spread of its bitrates and its stalls: runs below
// a quarter of the row's median, the mark of a transfer frozen in
// retransmission timeouts. Each run prints one line as it ends.
func runRepeat(ctx context.Context, o options, stdout io.Writer) error {
	cfg, modes, err := tableConfig(o)
	if err != nil {
		return err
	}
	env, closeEnv, err := newRunEnv(ctx, cfg, o)
	if err != nil {
		return err
	}
	defer closeEnv()
	fmt.Fprintf(stdout, "%s, %d runs\n", env.describe(cfg, o), o.repeat)
	runs := make(map[iperf.Mode][]iperf.Result, len(modes))
	for i := range o.repeat {
		line := []string{fmt.Sprintf("run %d/%d:", i+1, o.repeat)}
		for _, m := range modes {
			cfg := cfg
			cfg.Mode = m
			res, err := env.run(ctx, cfg)
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", i+1, m, err)
			}
			runs[m] = append(runs[m], res)
			line = append(line, fmt.Sprintf("%s %.2f Gbit/s %.1fs%s", m, res.Gbps(), res.Seconds, senderNote(res)))
			if !res.Verified {
				line = append(line, "NOT VERIFIED")
			}
		}
		fmt.Fprintln(stdout, strings.Join(line, "  "))
	}
	fmt.Fprintf(stdout, "\n%-15s %5s %8s %8s %8s %7s %6s  %s\n", "row", "runs", "median", "min", "max", "stalls", "wrong", "stalled runs (Gbit/s, seconds)")
	for _, m := range modes {
		s := summarize(runs[m])
		var stalled []string
		for _, r := range s.stalls {
			stalled = append(stalled, fmt.Sprintf("#%d %.3f %.1fs%s", r.run, r.gbps, r.seconds, senderNote(runs[m][r.run-1])))
		}
		fmt.Fprintf(stdout, "%-15s %5d %8.2f %8.2f %8.2f %7d %6d  %s\n", m, len(runs[m]), s.median, s.min, s.max, len(s.stalls), s.wrong, strings.Join(stalled, ", "))
	}
	fmt.Fprintln(stdout, "(Gbit/s; a stall is a run below a quarter of its row's median; wrong: a stream whose SHA-256 differed)")
	return nil
}

// rowSummary is one row's results over the repeated runs.
type rowSummary struct {
	median, min, max float64
	wrong            int
	stalls           []stalledRun
}

// stalledRun is a run below a quarter of its row's median.
type stalledRun struct {
	run           int // from 1
	gbps, seconds float64
}

// summarize returns the spread and the stalls of one row's runs.
func summarize(rs []iperf.Result) rowSummary {
	var s rowSummary
	if len(rs) == 0 {
		return s
	}
	g := make([]float64, len(rs))
	for i, r := range rs {
		g[i] = r.Gbps()
		if !r.Verified {
			s.wrong++
		}
	}
	sorted := slices.Clone(g)
	slices.Sort(sorted)
	s.min, s.max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		s.median = sorted[n/2]
	} else {
		s.median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	for i, v := range g {
		if v < s.median/4 {
			s.stalls = append(s.stalls, stalledRun{run: i + 1, gbps: v, seconds: rs[i].Seconds})
		}
	}
	return s
}

// senderNote names the sender's retransmission timeouts and link drops of
// a run, if it had any.
func senderNote(r iperf.Result) string {
	t := r.Sent.TCP
	if t == nil || t.Timeouts+t.LinkDropsQueueFull == 0 {
		return ""
	}
	return fmt.Sprintf(" (sender: %d RTOs, %d link drops)", t.Timeouts, t.LinkDropsQueueFull)
}
