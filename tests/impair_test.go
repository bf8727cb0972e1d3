package tests

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/netlro/netlro/internal/bench/iperf"
)

// transferBytes is the size of each impaired transfer: enough for
// thousands of segments, small enough for the whole matrix to run in well
// under a minute with -race on two cores.
const transferBytes = 2 << 20

// tinyBytes is the size of a tiny-mss transfer: at an 88-byte MSS it is
// already thousands of segments.
const tinyBytes = 256 << 10

// transferTimeout bounds one transfer; a healthy one takes a few seconds
// even under -race.
const transferTimeout = 45 * time.Second

// TestImpairedTransfers sends seeded streams between two netstacks over
// every impairment profile, IPv4 and IPv6, into this project's fdbased
// alone and wrapped by netlro, and checks that every stream arrives with
// the sender's length and SHA-256. The checksum-sensitive profiles also
// run with netlro's other two configurations.
func TestImpairedTransfers(t *testing.T) {
	for _, prof := range iperf.Profiles {
		modes := []iperf.Mode{iperf.ModeFdbased, iperf.ModeNetlro}
		if prof.Corrupt > 0 {
			modes = append(modes, iperf.ModeNetlroReseg, iperf.ModeNetlroOffload)
		}
		for _, v6 := range []bool{false, true} {
			for _, mode := range modes {
				name := fmt.Sprintf("%s/%s/%s", prof.Name, ipName(v6), mode)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					cfg := iperf.Config{
						Mode:    mode,
						IPv6:    v6,
						Profile: prof,
						Send:    iperf.SendOptions{Streams: 1, Bytes: transferBytes, Seed: 1},
					}
					if prof.MSS > 0 {
						cfg.Send.Bytes = tinyBytes
					}
					res := runTransfer(t, cfg)
					checkProfile(t, cfg, res)
				})
			}
		}
	}
}

// runTransfer runs one in-process transfer and checks what must hold for
// every profile: all bytes arrived, unchanged.
func runTransfer(t *testing.T, cfg iperf.Config) iperf.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), transferTimeout)
	defer cancel()
	res, err := iperf.Run(ctx, cfg)
	require.NoError(t, err)
	t.Logf("%d bytes on %d streams in %.2fs, %d packets into netstack", res.Bytes, res.Streams, res.Seconds, res.PacketsIn)
	if res.Sent.Pump != nil {
		t.Logf("pump: %+v", *res.Sent.Pump)
	}
	if res.LRO != nil {
		t.Logf("lro: %s", res.LRO)
	}
	assert.Equal(t, cfg.Send.Bytes, res.Bytes, "bytes received")
	assert.True(t, res.Verified, "a stream arrived different from what was sent")
	assert.Zero(t, res.Sent.CPUSeconds, "one process runs both stacks: no sender CPU of its own")
	return res
}

// checkProfile checks what the profile promises beyond intact data: the
// pump impaired what it should, and netlro saw the corrupted segments and
// kept them out of merged packets.
func checkProfile(t *testing.T, cfg iperf.Config, res iperf.Result) {
	t.Helper()
	p := cfg.Profile
	if p.Streams > 0 {
		assert.Len(t, res.Received, p.Streams, "streams received")
	}
	if !p.Impairs() {
		assert.Nil(t, res.Sent.Pump, "a clean link has no pump")
		return
	}
	require.NotNil(t, res.Sent.Pump)
	pump := *res.Sent.Pump
	for _, c := range []struct {
		name  string
		rate  float64
		count uint64
	}{
		{"dropped", p.Loss, pump.Dropped},
		{"reordered", p.Reorder, pump.Reordered},
		{"duplicated", p.Dup, pump.Duplicated},
		{"corrupted", p.Corrupt, pump.Corrupted},
	} {
		if c.rate > 0 {
			assert.NotZero(t, c.count, "frames %s", c.name)
		}
	}
	if p.Corrupt > 0 && res.LRO != nil {
		// Most flips land in a TCP payload, whose checksum the engine
		// verifies before anything merges.
		bad := res.LRO.PassBadChecksum + res.LRO.DropBadChecksum
		assert.NotZero(t, bad, "bad checksums the engine saw")
		if _, ok := cfg.Mode.LROConfig(); ok && !cfg.Mode.ClaimsOffload() {
			assert.NotZero(t, res.LRO.PassBadChecksum, "PassBadChecksum")
		}
	}
}

func ipName(v6 bool) string {
	if v6 {
		return "ipv6"
	}
	return "ipv4"
}
