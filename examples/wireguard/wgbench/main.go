// Command wgbench measures how netstack receives TCP through a userspace
// WireGuard tunnel: two wireguard-go devices with real keys over loopback
// UDP, the receiver in a child process, fed three ways (wireguard-go's
// tun/netstack, gVisor's GRO as Tailscale uses it, and netlro's lrotun).
//
//	go run ./wgbench                      # every row, 256 MiB a row
//	go run ./wgbench -senders netstack -mib 64 -receivers netlro,gvisor-gro
//
// The kernel sender (Linux's TCP through a kernel TUN) needs root; its rows
// are skipped with a message without it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// namePrefix starts the names of the network namespace (NAME-PID) and the
// TUN device (NAMEk0) that the kernel sender creates.
var namePrefix = "wgbench"

func main() {
	if cfg, ok := os.LookupEnv(childEnv); ok {
		if err := runChild(cfg, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "wgbench receiver:", err)
			os.Exit(1)
		}
		return
	}
	senders := flag.String("senders", "netstack,kernel", "comma-separated senders: netstack, kernel")
	recvs := flag.String("receivers", strings.Join(receivers, ","), "comma-separated receivers")
	mib := flag.Int64("mib", 256, "MiB per row, split over its streams")
	only := flag.String("only", "", "run only rows whose name contains this (e.g. 'v6 x4')")
	timeout := flag.Duration("timeout", 5*time.Minute, "time limit per row")
	profiles := flag.String("profile", "", "directory to write each row's receiver CPU profile to (go tool pprof)")
	flag.StringVar(&namePrefix, "names", namePrefix, "prefix of the network namespace and TUN device names the kernel sender creates")
	flag.Parse()
	if *profiles != "" {
		if err := os.MkdirAll(*profiles, 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "wgbench: %v\n", err)
			os.Exit(1)
		}
	}

	fmt.Println(tableHeader())
	failed := false
	for _, r := range rows(senderList(*senders), 0) {
		if !slices.Contains(strings.Split(*recvs, ","), r.Receiver) || !strings.Contains(r.String(), *only) {
			continue
		}
		r.Bytes = *mib << 20 / int64(r.Streams)
		if *profiles != "" {
			r.Profile = filepath.Join(*profiles, strings.NewReplacer(" ", "_", ">", "").Replace(r.String())+".pprof")
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		res, err := runRow(ctx, r)
		cancel()
		if errors.Is(err, errNoRoot) {
			fmt.Fprintf(os.Stderr, "skipping %v: %v\n", r, err)
			continue
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "%v: %v\n", r, err)
			failed = true
			continue
		}
		fmt.Println(res.format())
	}
	if failed {
		os.Exit(1)
	}
}
