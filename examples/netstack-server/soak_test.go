package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/netlro/netlro/internal/bench/iperf"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSoak runs a short soak, two cycles of 1.5 s with two streams each
// way over the mixed link, and checks its JSON lines: nothing wrong or
// failed, no hang, and the summary the sum of its cycles.
func TestSoak(t *testing.T) {
	code, out, errOut := runArgs(t, "-soak", "3s", "-soak-cycle", "1500ms", "-streams", "2", "-soak-stream", "256K", "-json")
	var (
		cycles []soakCycle
		stalls []soakStall
		sum    *soakSummary
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var kind struct{ Type string }
		require.NoError(t, json.Unmarshal(sc.Bytes(), &kind), sc.Text())
		switch kind.Type {
		case "cycle":
			var c soakCycle
			require.NoError(t, json.Unmarshal(sc.Bytes(), &c))
			cycles = append(cycles, c)
		case "stall":
			var s soakStall
			require.NoError(t, json.Unmarshal(sc.Bytes(), &s))
			stalls = append(stalls, s)
		case "summary":
			sum = new(soakSummary)
			require.NoError(t, json.Unmarshal(sc.Bytes(), sum))
		default:
			t.Fatalf("line of type %q: %s", kind.Type, sc.Text())
		}
	}
	require.NotNil(t, sum, "no summary; stdout:\n%s\nstderr:\n%s", out, errOut)
	require.Empty(t, sum.Hang, "teardown hang (the known Stack.Destroy deadlock)")
	require.Equal(t, 0, code, "failures %q; stderr:\n%s", sum.Failures, errOut)

	assert.GreaterOrEqual(t, sum.Cycles, 2)
	assert.Len(t, cycles, sum.Cycles)
	assert.Len(t, stalls, sum.Stalls)
	assert.Zero(t, sum.BytesWrong)
	assert.Zero(t, sum.Wrong)
	assert.Zero(t, sum.Failed)
	assert.Positive(t, sum.Completed)
	assert.Equal(t, sum.Started, sum.Completed+sum.Cut+sum.Wrong+sum.Failed)
	assert.LessOrEqual(t, sum.BytesVerified, sum.BytesMoved)
	var moved, verified int64
	var started, completed int
	for _, c := range cycles {
		assert.Positive(t, c.ForwardBytes, "cycle %d forward", c.Cycle)
		assert.Positive(t, c.ReverseBytes, "cycle %d reverse", c.Cycle)
		moved += c.Bytes()
		verified += c.VerifiedBytes
		started += c.Started
		completed += c.Completed
	}
	assert.Equal(t, moved, sum.BytesMoved)
	assert.Equal(t, verified, sum.BytesVerified)
	assert.Equal(t, started, sum.Started)
	assert.Equal(t, completed, sum.Completed)
	assert.Positive(t, sum.Pump.Dropped+sum.Pump.Corrupted, "the mixed profile impaired the link")
	assert.Positive(t, sum.End.Goroutines)
	assert.Positive(t, sum.End.RSS)
}

// TestSoakReceiveShortEOF holds the receive side's rule for a stream that
// ends with a clean EOF before its size: gonet reports a connection closed
// by the teardown as EOF, so during a teardown a correct prefix is a cut;
// anything else, or a short stream outside a teardown, is wrong.
func TestSoakReceiveShortEOF(t *testing.T) {
	const seed, size, short = 7, 50000, 20000
	stream := func(flip bool) []byte {
		b := make([]byte, short)
		_, _ = io.ReadFull(iperf.NewSource(seed, 1), b)
		if flip {
			b[short/2] ^= 1
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		tearing bool
		flip    bool
		wrong   bool // what account counts it as: wrong, or else cut
	}{
		{name: "prefix at teardown", tearing: true},
		{name: "corrupt prefix at teardown", tearing: true, flip: true, wrong: true},
		{name: "prefix outside a teardown", wrong: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &soak{o: soakOptions{seed: seed}, out: io.Discard, errOut: io.Discard, start: time.Now()}
			c := &cycle{s: s, n: 1, start: time.Now(), streams: map[uint64]*soakStream{}}
			c.lastRead.Store(c.start.UnixNano())
			st := &soakStream{id: 1, dir: "forward", size: size, started: time.Now()}
			h := sha256.New()
			_, _ = io.CopyN(h, iperf.NewSource(seed, 1), size)
			st.sent = streamEnd{done: true, bytes: size, sum: hex.EncodeToString(h.Sum(nil))}
			c.streams[1] = st
			if tc.tearing {
				c.tearing.Store(true)
				c.tearAt.Store(time.Now().UnixNano())
			}
			a, b := net.Pipe()
			go func() {
				var hdr [8]byte
				binary.BigEndian.PutUint64(hdr[:], 1)
				_, _ = a.Write(hdr[:])
				_, _ = a.Write(stream(tc.flip))
				a.Close()
			}()
			c.receive(b)
			var res soakCycle
			c.account(&res)
			if tc.wrong {
				assert.Equal(t, 1, res.Wrong, "wrong")
			} else {
				assert.Equal(t, 0, res.Wrong, "wrong")
				assert.Equal(t, 1, res.Cut, "cut")
			}
		})
	}
}
