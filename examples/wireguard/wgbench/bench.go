package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
)

// row is one measurement.
type row struct {
	Sender     string
	Receiver   string
	IPv6       bool
	Streams    int
	SameBucket bool   // source ports chosen so that every flow lands in one gVisor GRO bucket
	Bytes      int64  // per stream
	Profile    string // if set, where the receiver writes its CPU profile
}

func (r row) String() string {
	ip := "v4"
	if r.IPv6 {
		ip = "v6"
	}
	b := ""
	if r.SameBucket {
		b = " 1-bucket"
	}
	return fmt.Sprintf("%s->%s %s x%d%s", r.Sender, r.Receiver, ip, r.Streams, b)
}

// result is one row's figures.
type result struct {
	row
	Child     childResult
	SenderRd  batches // what the sending TUN device gave wireguard-go per Read
	SenderTx  batches // what the sending wireguard-go handed its bind per Send
	Verified  bool    // every stream's SHA-256 matched
	Gbps      float64
	CPUPerGB  float64 // receiving process, s/GB
	NSPerGB   float64 // receiving netstack's share of it, s/GB
	SegPerPkt float64 // packets into Write per packet into netstack's IP; 0 if unknown
}

// sourcePort is the sending port of stream i. Consecutive ports land in
// different buckets of gVisor's GRO, which adds up address bytes and ports
// modulo 8; ports 8 apart land in the same one.
func sourcePort(i int, sameBucket bool) int {
	if sameBucket {
		return 40000 + 8*i
	}
	return 40000 + i
}

// runRow runs one row: the receiver in a child process (so that its CPU
// time is its own), the sender here.
func runRow(ctx context.Context, r row) (result, error) {
	res := result{row: r}
	ks, err := newKey()
	if err != nil {
		return res, err
	}
	kr, err := newKey()
	if err != nil {
		return res, err
	}
	cfg, err := json.Marshal(childConfig{Receiver: r.Receiver, Key: kr, PeerPublic: ks.Public, IPv6: r.IPv6, Streams: r.Streams, Bytes: r.Bytes, Profile: r.Profile})
	if err != nil {
		return res, err
	}
	exe, err := os.Executable()
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = childAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := cmd.Start(); err != nil {
		return res, err
	}
	defer cmd.Wait()
	defer cmd.Process.Kill() // a no-op once it has exited
	out := bufio.NewReader(stdout)
	hello, err := readResult(out)
	if err != nil {
		return res, err
	}
	if hello.Err != "" || hello.Port == 0 {
		return res, fmt.Errorf("receiver: %s", hello.Err)
	}

	newSender := newNetstackSender
	if r.Sender == sendKernel {
		newSender = newKernelSender
	}
	s, err := newSender(ks, kr.Public, hello.Port)
	if err != nil {
		return res, err
	}
	defer s.close()

	sent, err := send(ctx, s, r)
	if err != nil {
		return res, err
	}
	res.Child, err = readResult(out)
	if err != nil {
		return res, err
	}
	if res.Child.Err != "" {
		return res, fmt.Errorf("receiver: %s", res.Child.Err)
	}
	res.SenderRd = s.dev.readBatches()
	res.SenderTx = s.bind.sendBatches()
	res.Verified = true
	for i, p := range res.Child.Ports {
		if res.Child.SHA256[i] != sent[p] {
			res.Verified = false
		}
	}
	if !res.Verified {
		return res, fmt.Errorf("%v: SHA-256 of what arrived differs from what was sent", r)
	}
	total := float64(r.Bytes) * float64(r.Streams)
	res.Gbps = total * 8 / res.Child.Seconds / 1e9
	res.CPUPerGB = res.Child.CPU / (total / 1e9)
	res.NSPerGB = res.CPUPerGB * res.Child.Shares["netstack"]
	if res.Child.StackPkts > 0 {
		res.SegPerPkt = float64(res.Child.Writes.Packets) / float64(res.Child.StackPkts)
	}
	return res, nil
}

// send opens r.Streams connections and writes r.Bytes of seeded random
// data on each; it returns the SHA-256 of each stream by source port.
func send(ctx context.Context, s *sender, r row) (map[int]string, error) {
	addr := netip.MustParseAddr(receiverV4)
	if r.IPv6 {
		addr = netip.MustParseAddr(receiverV6)
	}
	to := netip.AddrPortFrom(addr, dataPort)
	var mu sync.Mutex
	sums := map[int]string{}
	errs := make([]error, r.Streams)
	var wg sync.WaitGroup
	for i := range r.Streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			port := sourcePort(i, r.SameBucket)
			c, err := s.dial(ctx, port, to)
			if err != nil {
				errs[i] = fmt.Errorf("dial from port %d: %w", port, err)
				return
			}
			defer c.Close()
			if d, ok := ctx.Deadline(); ok {
				c.SetDeadline(d)
			}
			h := sha256.New()
			src := io.LimitReader(rand.NewChaCha8([32]byte{byte(i), byte(r.Bytes)}), r.Bytes)
			if _, err := io.CopyBuffer(io.MultiWriter(c, h), src, make([]byte, 256<<10)); err != nil {
				errs[i] = fmt.Errorf("stream from port %d: %w", port, err)
				return
			}
			mu.Lock()
			sums[port] = hex.EncodeToString(h.Sum(nil))
			mu.Unlock()
		}()
	}
	wg.Wait()
	return sums, errors.Join(errs...)
}

// header and format print the table.
func tableHeader() string {
	return "| sender | receiver | IP | streams | MiB | Gbit/s | recv CPU s/GB | netstack s/GB | netstack share | seg/pkt | pkts/Write mean (max) | sender pkts/Read mean (max) | sender pkts/Send mean (max) | Writes leaving data held | SHA-256 |\n" +
		"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
}

func (r result) format() string {
	ip := "4"
	if r.IPv6 {
		ip = "6"
	}
	streams := fmt.Sprint(r.Streams)
	if r.SameBucket {
		streams += " (1 GRO bucket)"
	}
	seg := "1 (no merging)"
	if r.SegPerPkt > 0 {
		seg = fmt.Sprintf("%.1f", r.SegPerPkt)
	}
	ok := "ok"
	if !r.Verified {
		ok = "MISMATCH"
	}
	held := "-"
	if r.Receiver != recvInject && r.Receiver != recvPerPacket {
		held = fmt.Sprint(r.Child.HeldWrites)
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %d | %.2f | %.2f | %.2f | %.0f %% | %s | %.1f (%d) | %.1f (%d) | %.1f (%d) | %s | %s |",
		r.Sender, r.Receiver, ip, streams, r.Bytes*int64(r.Streams)>>20, r.Gbps, r.CPUPerGB, r.NSPerGB,
		100*r.Child.Shares["netstack"], seg, r.Child.Writes.Mean(), r.Child.Writes.Max,
		r.SenderRd.Mean(), r.SenderRd.Max, r.SenderTx.Mean(), r.SenderTx.Max, held, ok)
}

// rows is the table: every receiver side by side for each sender, IP
// version and stream count, and the one-bucket rows.
func rows(senders []string, bytes int64) []row {
	var rs []row
	for _, s := range senders {
		for _, v6 := range []bool{false, true} {
			for _, n := range []int{1, 4} {
				for _, rc := range receivers {
					rs = append(rs, row{Sender: s, Receiver: rc, IPv6: v6, Streams: n, Bytes: bytes})
				}
			}
		}
		for _, rc := range receivers {
			rs = append(rs, row{Sender: s, Receiver: rc, Streams: 4, SameBucket: true, Bytes: bytes})
		}
	}
	return rs
}

func senderList(s string) []string { return strings.Split(s, ",") }
