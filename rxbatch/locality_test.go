package rxbatch_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	netipv4 "gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/rxbatch"
)

// attachRecorder is a link endpoint that keeps the dispatcher netstack
// attaches it to: netstack's NIC.
type attachRecorder struct {
	*channel.Endpoint
	d stack.NetworkDispatcher
}

func (a *attachRecorder) Attach(d stack.NetworkDispatcher) {
	if d != nil {
		a.d = d
	}
	a.Endpoint.Attach(d)
}

// plain is a dispatcher that cannot tell which destinations netstack keeps.
type plain struct{ stack.NetworkDispatcher }

// answers is a dispatcher that answers Locality itself.
type answers struct {
	stack.NetworkDispatcher
	keep tcpip.Address
}

func (a answers) DeliversLocally(_ tcpip.NetworkProtocolNumber, addr tcpip.Address) bool {
	return addr == a.keep
}

// TestLocalityOf: netstack's own NIC answers by its addresses and
// promiscuous mode, which the test holds against the pinned gVisor; a
// dispatcher that answers itself is asked; one that cannot tell gives nil.
func TestLocalityOf(t *testing.T) {
	mine := tcpip.AddrFrom4([4]byte{10, 0, 0, 1})
	other := tcpip.AddrFrom4([4]byte{10, 0, 0, 2})

	s := stack.New(stack.Options{NetworkProtocols: []stack.NetworkProtocolFactory{netipv4.NewProtocol}})
	defer s.Destroy()
	link := &attachRecorder{Endpoint: channel.New(1, 1500, "")}
	require.Nil(t, s.CreateNIC(1, link))
	require.Nil(t, s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol: netipv4.ProtocolNumber, AddressWithPrefix: mine.WithPrefix(),
	}, stack.AddressProperties{}))
	require.NotNil(t, link.d, "netstack attached no dispatcher")

	nic := rxbatch.LocalityOf(link.d)
	require.NotNil(t, nic, "netstack's NIC does not answer Locality: did gVisor rename Promiscuous or CheckLocalAddress?")
	assert.True(t, nic.DeliversLocally(netipv4.ProtocolNumber, mine))
	assert.False(t, nic.DeliversLocally(netipv4.ProtocolNumber, other))
	require.Nil(t, s.SetPromiscuousMode(1, true))
	assert.True(t, nic.DeliversLocally(netipv4.ProtocolNumber, other), "a promiscuous NIC keeps every destination")

	own := rxbatch.LocalityOf(answers{keep: other})
	require.NotNil(t, own)
	assert.True(t, own.DeliversLocally(netipv4.ProtocolNumber, other))
	assert.False(t, own.DeliversLocally(netipv4.ProtocolNumber, mine))

	assert.Nil(t, rxbatch.LocalityOf(plain{}))
}
