package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/netlro/netlro/internal/bench/iperf"
)

// The sending side runs in a child process, this same binary started with
// senderFlag, so that the parent's CPU time is the receiver's alone. The
// child reads its job from senderEnv, sends, and prints the iperf.SendResult
// as JSON on stdout.
const (
	senderFlag = "internal-sender"
	senderEnv  = "NETLRO_SENDER"
)

// senderJob is what the parent tells the child.
type senderJob struct {
	Config iperf.Config `json:"config"`
	// Kernel selects the kernel's TCP (net.Dialer, in the network namespace
	// the child was started in) instead of a netstack on fd 3.
	Kernel bool `json:"kernel"`
	// Remote is the receiver's address for Kernel.
	Remote string `json:"remote"`
	// CC, for Kernel, is the TCP congestion control of the sender's
	// sockets. The results depend on it: on the development VM, whose
	// sysctl default is bbr, bbr's pacing held every netlro row to about
	// 3 Gbit/s, where cubic, Linux's default, reaches 4.4.
	CC string `json:"cc,omitempty"`
}

// childFD is the fd the child finds the socketpair end at: the first of
// exec.Cmd.ExtraFiles.
const childFD = 3

// runSenderChild is the child's main.
func runSenderChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var job senderJob
	if err := json.Unmarshal([]byte(os.Getenv(senderEnv)), &job); err != nil {
		fmt.Fprintf(os.Stderr, "netstack-server sender: bad %s: %v\n", senderEnv, err)
		return 1
	}
	var (
		res iperf.SendResult
		err error
	)
	if job.Kernel {
		d := net.Dialer{Control: congestionControl(job.CC)}
		dial := func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", job.Remote) }
		res, err = iperf.Send(ctx, dial, job.Config.Send, nil)
	} else {
		res, err = iperf.SendOverFD(ctx, job.Config, childFD)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "netstack-server sender: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "netstack-server sender: %v\n", err)
		return 1
	}
	return 0
}

// congestionControl returns a net.Dialer Control that sets cc as the
// socket's TCP congestion control, or nil for the system's default.
func congestionControl(cc string) func(network, address string, c syscall.RawConn) error {
	if cc == "" {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, cc)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("TCP congestion control %q: %w", cc, serr)
		}
		return nil
	}
}

// startSender runs the child with job. wrap, if not nil, is a command
// prefix (ip netns exec NAME); extra, if not nil, becomes the child's fd 3.
// The child is killed when ctx ends.
func startSender(ctx context.Context, job senderJob, wrap []string, extra *os.File) (iperf.SendResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return iperf.SendResult{}, fmt.Errorf("find own executable: %w", err)
	}
	env, err := json.Marshal(job)
	if err != nil {
		return iperf.SendResult{}, err
	}
	argv := append(append([]string(nil), wrap...), exe, "-"+senderFlag)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), senderEnv+"="+string(env))
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if extra != nil {
		cmd.ExtraFiles = []*os.File{extra}
	}
	if err := cmd.Run(); err != nil {
		return iperf.SendResult{}, fmt.Errorf("sender process: %w", err)
	}
	var res iperf.SendResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return iperf.SendResult{}, fmt.Errorf("sender process printed %q: %w", stdout.String(), err)
	}
	return res, nil
}

// socketpairEnv runs rows over a socketpair, the sender's netstack in a
// child process.
type socketpairEnv struct{}

func (socketpairEnv) describe(cfg iperf.Config, o options) string {
	return fmt.Sprintf("two netstacks over a unix SOCK_SEQPACKET socketpair, sender (gVisor fdbased, GSO off) in a child process\n%s",
		describeRun(cfg))
}

func (socketpairEnv) run(ctx context.Context, cfg iperf.Config) (iperf.Result, error) {
	fds, err := iperf.Socketpair()
	if err != nil {
		return iperf.Result{}, err
	}
	defer unix.Close(fds[1])
	senderEnd := os.NewFile(uintptr(fds[0]), "sender")
	defer senderEnd.Close()
	return iperf.RunReceiver(ctx, cfg, iperf.LinkOptions{FD: fds[1]}, func(ctx context.Context) (iperf.SendResult, error) {
		return startSender(ctx, senderJob{Config: cfg}, nil, senderEnd)
	})
}

// describeRun says what each row sends.
func describeRun(cfg iperf.Config) string {
	ip := "IPv4"
	if cfg.IPv6 {
		ip = "IPv6"
	}
	mtu := cfg.MTU
	if mtu == 0 {
		mtu = iperf.DefaultMTU
	}
	amount := "for " + cfg.Send.Duration.String()
	if cfg.Send.Bytes > 0 {
		amount = strconv.FormatInt(cfg.Send.Bytes, 10) + " bytes"
	}
	streams := cfg.Send.Streams
	if cfg.Profile.Streams > 0 {
		streams = cfg.Profile.Streams
	}
	s := fmt.Sprintf("%s, MTU %d, %d stream(s), each row sends %s", ip, mtu, streams, amount)
	if cfg.Profile.Name != "" {
		s += ", link impairment " + cfg.Profile.Name
	}
	return s
}
