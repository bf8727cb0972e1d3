package vmnet

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// clientEnv, when set to the server's port, makes the test binary the
// client inside rootlesskit's child: see runClient.
const clientEnv = "T23_VMNET_CLIENT_PORT"

func TestMain(m *testing.M) {
	if port := os.Getenv(clientEnv); port != "" {
		if err := runClient(port); err != nil {
			fmt.Fprintln(os.Stderr, "client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// rkSize is what TestRootlesskit sends each way.
const rkSize = 8 << 20

// runClient runs in rootlesskit's child: it sends rkSize seeded bytes to
// the gateway (10.0.2.1, the parent's loopback), then reads what the
// server sends on a second connection and prints its SHA-256.
func runClient(port string) error {
	addr := net.JoinHostPort("10.0.2.1", port)
	up, _ := payload(rkSize, 1)
	c, err := net.DialTimeout("tcp", addr, hangGuard)
	if err != nil {
		return err
	}
	c.SetDeadline(time.Now().Add(hangGuard))
	if _, err := c.Write(up); err != nil {
		return err
	}
	c.Close()
	c, err = net.DialTimeout("tcp", addr, hangGuard)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(hangGuard))
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		return err
	}
	fmt.Printf("down sha256 %x\n", h.Sum(nil))
	return nil
}

// inNetns runs f on a thread in the network namespace at path; the
// thread is never reused.
func inNetns(path string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // and never unlocked: the thread dies with the goroutine
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// TestRootlesskit runs the patched rootlesskit as its benchmark does,
// with --net=gvisor-tap-vsock, in a network namespace of its own, and
// sends rkSize bytes each way between its child and a server in the
// parent's namespace, comparing SHA-256: with the child as it is and with
// its batched copies (NETLRO_CHILD=batch), at both MTUs.
func TestRootlesskit(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: a network namespace of its own, and rootlesskit's user namespace")
	}
	ipTool, err := exec.LookPath("ip")
	if err != nil {
		t.Skip("needs ip (iproute2)")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("needs the go command, to build rootlesskit")
	}
	dir := t.TempDir()
	rk := filepath.Join(dir, "rootlesskit")
	out, err := exec.Command(goTool, "build", "-o", rk, "github.com/rootless-containers/rootlesskit/v3/cmd/rootlesskit").CombinedOutput()
	require.NoError(t, err, "building rootlesskit: %s", out)
	out, err = exec.Command("sh", "rootstubs.sh", filepath.Join(dir, "bin")).CombinedOutput()
	require.NoError(t, err, "%s", out)

	netns := fmt.Sprintf("t23rk%d", os.Getpid())
	out, err = exec.Command(ipTool, "netns", "add", netns).CombinedOutput()
	if err != nil {
		t.Skipf("cannot make a network namespace: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command(ipTool, "netns", "del", netns).Run() })
	out, err = exec.Command(ipTool, "-n", netns, "link", "set", "lo", "up").CombinedOutput()
	require.NoError(t, err, "%s", out)

	for _, tc := range []struct {
		name  string
		mtu   int
		child string // NETLRO_CHILD
	}{
		{"MTU 1500", 1500, ""},
		{"MTU 1500, batched child", 1500, "batch"},
		{"MTU 65520, batched child", 65520, "batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ln net.Listener
			require.NoError(t, inNetns("/run/netns/"+netns, func() (err error) {
				ln, err = net.Listen("tcp", "127.0.0.1:0")
				return err
			}))
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port

			_, upSum := payload(rkSize, 1)
			down, downSum := payload(rkSize, 2)
			hostGot := make(chan []byte, 1)
			go func() {
				defer close(hostGot)
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.SetDeadline(time.Now().Add(hangGuard))
				h := sha256.New()
				_, err = io.Copy(h, c)
				c.Close()
				if err != nil {
					return
				}
				hostGot <- h.Sum(nil)
				if c, err = ln.Accept(); err == nil {
					c.SetDeadline(time.Now().Add(hangGuard))
					c.Write(down)
					c.Close()
				}
			}()

			ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
			defer cancel()
			cmd := exec.CommandContext(ctx, ipTool, "netns", "exec", netns, rk,
				"--state-dir="+filepath.Join(dir, "state-"+strconv.Itoa(tc.mtu)+tc.child),
				"--net=gvisor-tap-vsock", "--mtu="+strconv.Itoa(tc.mtu),
				"--", os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(),
				"PATH="+filepath.Join(dir, "bin")+":"+os.Getenv("PATH"),
				clientEnv+"="+strconv.Itoa(port),
				"NETLRO_CHILD="+tc.child)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "rootlesskit: %s", out)
			got := <-hostGot
			assert.Equal(t, upSum[:], got, "child to parent: SHA-256")
			var downGot string
			for sc := bufio.NewScanner(strings.NewReader(string(out))); sc.Scan(); {
				if s, ok := strings.CutPrefix(sc.Text(), "down sha256 "); ok {
					downGot = s
				}
			}
			assert.Equal(t, hex.EncodeToString(downSum[:]), downGot, "parent to child: SHA-256; output: %s", out)
		})
	}
}
