package rxbatch_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/rxbatch"
)

// TestNewPacket: the link header is consumed, the rest is the packet's
// data, and the protocol and checksum flag are set.
func TestNewPacket(t *testing.T) {
	for _, tc := range []struct {
		name     string
		linkHdr  int
		verified bool
	}{
		{name: "no link header", linkHdr: 0},
		{name: "Ethernet, verified", linkHdr: header.EthernetMinimumSize, verified: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frame := make([]byte, tc.linkHdr+header.IPv4MinimumSize)
			for i := range frame {
				frame[i] = byte(i)
			}
			pkt := rxbatch.NewPacket(header.IPv4ProtocolNumber, tc.linkHdr, buffer.MakeWithData(frame), tc.verified)
			defer pkt.DecRef()
			assert.Equal(t, header.IPv4ProtocolNumber, pkt.NetworkProtocolNumber)
			assert.Equal(t, tc.verified, pkt.RXChecksumValidated)
			link := pkt.LinkHeader().Slice()
			require.Len(t, link, tc.linkHdr)
			assert.Equal(t, frame[:tc.linkHdr], append([]byte{}, link...))
			data := pkt.Data().AsRange().ToSlice()
			assert.Equal(t, frame[tc.linkHdr:], data)
		})
	}
}
