package lro

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"gvisor.dev/gvisor/pkg/tcpip"

	"github.com/netlro/netlro/internal/testpacket"
)

// fakeNIC is a netstack NIC as the engine sees it: a dispatcher that can
// say which destinations it keeps.
type fakeNIC struct {
	recorder
	promiscuous bool
	local       tcpip.Address
	asked       int
}

func (n *fakeNIC) Promiscuous() bool { return n.promiscuous }

func (n *fakeNIC) CheckLocalAddress(_ tcpip.NetworkProtocolNumber, a tcpip.Address) bool {
	n.asked++
	return a == n.local
}

// TestNotLocalPasses: delivering straight to a NIC, the engine merges a
// flow whose destination the NIC keeps (its address, or any while
// promiscuous) and passes one it would forward, asking once per session.
func TestNotLocalPasses(t *testing.T) {
	segs := testpacket.Segments(testpacket.TCP{}, testpacket.Payload(4, 8*1448), 1448)
	dst := tcpip.AddrFrom4Slice(segs[0][16:20])
	for _, tc := range []struct {
		name string
		nic  *fakeNIC
		want []int
	}{
		{name: "local address", nic: &fakeNIC{local: dst}, want: []int{8}},
		{name: "promiscuous", nic: &fakeNIC{promiscuous: true}, want: []int{8}},
		{name: "forwarded", nic: &fakeNIC{}, want: []int{1, 1, 1, 1, 1, 1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nic := tc.nic
			e := newEngine(t, nic, Config{})
			for _, s := range segs {
				feed(e, viaFragments, s)
			}
			e.Flush()
			requirePartition(t, segs, nic.take(), tc.want)
			st := e.Stats()
			if len(tc.want) == 1 {
				assert.Zero(t, st.PassNotLocal)
				assert.LessOrEqual(t, nic.asked, 1, "asked once per session")
			} else {
				assert.Equal(t, uint64(len(segs)), st.PassNotLocal)
			}
		})
	}
}
