package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/refs"
)

// TestMain is also the receiving process: runRow starts the test binary
// again with childEnv set.
func TestMain(m *testing.M) {
	if cfg, ok := os.LookupEnv(childEnv); ok {
		if err := runChild(cfg, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "wgbench receiver:", err)
			os.Exit(1)
		}
		// wireguard-go's tun/netstack never releases the packets it
		// injects, so the receiving process skips the leak check.
		os.Exit(0)
	}
	flag.Parse()
	refs.SetLeakMode(refs.LeaksPanic)
	code := m.Run()
	refs.DoLeakCheck()
	os.Exit(code)
}

// TestEndToEnd runs nine small rows of the table with real wireguard-go
// at both ends and checks that every byte arrives (SHA-256 per stream), that
// the figures were taken, and that netlro merged without dropping or
// failing a checksum. The kernel sender's rows skip without root.
func TestEndToEnd(t *testing.T) {
	const size = 2 << 20
	rs := []row{
		{Sender: sendNetstack, Receiver: recvInject, Streams: 1},
		{Sender: sendNetstack, Receiver: recvPerPacket, Streams: 1},
		{Sender: sendNetstack, Receiver: recvGRO, Streams: 1},
		{Sender: sendNetstack, Receiver: recvLROTrust, Streams: 1},
		{Sender: sendNetstack, Receiver: recvLRO, IPv6: true, Streams: 4},
		{Sender: sendNetstack, Receiver: recvGRO, Streams: 4, SameBucket: true},
		{Sender: sendKernel, Receiver: recvGRO, Streams: 1},
		{Sender: sendKernel, Receiver: recvLRO, Streams: 1},
		{Sender: sendKernel, Receiver: recvLRO, IPv6: true, Streams: 4},
	}
	for _, r := range rs {
		r.Bytes = size / int64(r.Streams)
		t.Run(r.String(), func(t *testing.T) {
			// A hang guard, not a measurement.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			res, err := runRow(ctx, r)
			if errors.Is(err, errNoRoot) {
				t.Skip(err)
			}
			require.NoError(t, err)
			t.Log(res.format())
			require.True(t, res.Verified)
			require.Len(t, res.Child.SHA256, r.Streams)
			assert.Positive(t, res.Child.CPU)
			assert.NotZero(t, res.Child.Writes.Packets)
			assert.NotZero(t, res.SenderRd.Packets)
			if r.Receiver == recvLRO || r.Receiver == recvLROTrust {
				st := res.Child.LRO
				require.NotNil(t, st)
				assert.NotZero(t, st.MergedPackets, "netlro merged nothing: %+v", *st)
				assert.Zero(t, st.Dropped()+st.PassBadChecksum, "%+v", *st)
			}
		})
	}
}
