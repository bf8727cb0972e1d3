package lroendpoint

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"

	"github.com/netlro/netlro/internal/testpacket"
	"github.com/netlro/netlro/lro"
)

// TestDeliverBytesAllocs: packets handed to the wrapper as bytes, from one
// reused buffer, cost no allocation per packet in steady state, merged or
// passed, through the wrapper's gate to the NIC.
func TestDeliverBytesAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	acks := make([][]byte, 32)
	for i := range acks {
		acks[i] = testpacket.TCP{Ack: uint32(i)}.Bytes()
	}
	for _, tt := range []struct {
		name string
		pkts [][]byte
		out  int // packets the NIC gets per batch
	}{
		{"merge", testpacket.Segments(testpacket.TCP{TS: true}, testpacket.Payload(1, 40*1448), 1448), 1},
		{"merge v6", testpacket.Segments(testpacket.TCP{V6: true}, testpacket.Payload(2, 40*1428), 1428), 1},
		{"pass", acks, len(acks)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e, err := New(channel.New(16, 1500, ""), lro.Config{FlushDelay: -1})
			require.NoError(t, err)
			defer e.Close()
			nic := &counter{}
			e.Attach(nic)
			buf := make([]byte, 1<<16)
			batch := func() {
				for _, p := range tt.pkts {
					b := buf[:copy(buf, p)]
					e.DeliverBytes(testpacket.Proto(p), b)
					clear(b) // the caller reuses its buffer at once
				}
				e.Flush()
			}
			batch() // warm the pools
			require.Equal(t, tt.out, nic.pkts)
			assert.Zero(t, testing.AllocsPerRun(50, batch), "allocations per batch of %d packets", len(tt.pkts))
		})
	}
}
