package lro

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/testpacket"
)

// TestSetMerging: turning merging off delivers what was held, then every
// segment passes one for one, in order, counted as PassMergingOff; turning
// it on merges again. Every queue follows its engine's switch.
func TestSetMerging(t *testing.T) {
	for _, p := range paths {
		t.Run(p.String(), func(t *testing.T) {
			rec := &recorder{}
			e := newEngine(t, rec, Config{})
			q := e.queue(1)
			segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(1, 12*1448), 1448)
			for _, s := range segs[:4] {
				feed(q, p, s)
			}
			require.Empty(t, rec.take(), "held")
			e.SetMerging(false)
			require.False(t, e.Merging())
			for _, s := range segs[4:8] {
				feed(q, p, s)
			}
			requirePartition(t, segs[:8], rec.take(), []int{4, 1, 1, 1, 1})
			e.SetMerging(true)
			for _, s := range segs[8:] {
				feed(q, p, s)
			}
			e.Flush()
			requirePartition(t, segs[8:], rec.take(), []int{4})
			st := e.Stats()
			assert.Equal(t, uint64(12), st.PacketsIn)
			assert.Equal(t, uint64(4), st.PassMergingOff)
		})
	}
}

// switcher turns its engine's merging off from inside a delivery, as a
// netstack callback could.
type switcher struct {
	discard
	e *Engine
}

func (s *switcher) DeliverNetworkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {
	s.e.SetMerging(!s.e.Merging())
}

// TestSetMergingInsideDelivery: SetMerging may be called on a goroutine
// that is inside netstack on the engine's behalf; it waits for nothing
// there.
func TestSetMergingInsideDelivery(t *testing.T) {
	sw := &switcher{}
	sw.e = newEngine(t, sw, Config{MaxSegments: 2})
	segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(2, 64*1448), 1448)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, s := range segs {
			feed(sw.e, viaPacket, s)
		}
		sw.e.Flush()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a delivery that switched merging did not return within a minute")
	}
	st := sw.e.Stats()
	assert.Equal(t, uint64(len(segs)), st.PacketsIn)
	assert.NotZero(t, st.PassMergingOff)
	assert.NotZero(t, st.MergedPackets)
}
