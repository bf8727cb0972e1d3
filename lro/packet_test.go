package lro

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/netlro/netlro/internal/csum"
	"github.com/netlro/netlro/internal/testpacket"
)

// TestPacketRefReadsEveryFormAlike: a packet is read the same way whether
// it came as a PacketBuffer, a frame's views or the caller's bytes, and
// wherever its views are split: in the link header, the IP header, the
// TCP header or the payload. A header that spans views is joined, and
// what is read afterwards is still the packet.
func TestPacketRefReadsEveryFormAlike(t *testing.T) {
	seg := stream(testpacket.TCP{}, []int{300}, 1, nil)[0]
	frame := append(make([]byte, header.EthernetMinimumSize), seg...)
	frame[11] = 9 // the source MAC's last byte: the link ID
	const link = header.EthernetMinimumSize
	hdrLen := header.IPv4MinimumSize + int(header.TCP(seg[header.IPv4MinimumSize:]).DataOffset())

	split := func(at ...int) buffer.Buffer {
		var b buffer.Buffer
		last := 0
		for _, a := range append(at, len(frame)) {
			v := buffer.MakeWithData(frame[last:a])
			b.Merge(&v)
			last = a
		}
		return b
	}
	forms := []struct {
		name   string
		make   func(cuts []int) (packetRef, func())
		linkID uint64
	}{
		{"PacketBuffer", func(cuts []int) (packetRef, func()) {
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: split(cuts...)})
			pkt.LinkHeader().Consume(link)
			return packetOf(pkt), pkt.DecRef
		}, 9},
		{"frame", func(cuts []int) (packetRef, func()) {
			r := frameOf(split(cuts...), link)
			return r, func() {} // released below, through r
		}, 9},
		{"bytes", func([]int) (packetRef, func()) {
			return bytesOf(bytes.Clone(seg)), func() {}
		}, 0},
	}
	for _, cuts := range [][]int{nil, {5}, {link + 7}, {link + 30}, {link + hdrLen + 100}, {3, link + 10, link + 25, link + hdrLen + 1}} {
		for _, form := range forms {
			r, release := form.make(cuts)
			name := form.name
			assert.Equal(t, len(seg), r.size, "%s %v: size", name, cuts)
			assert.Equal(t, form.linkID, r.linkID(), "%s %v: link ID", name, cuts)
			payload := make([]byte, 300)
			r.copyTo(payload, hdrLen)
			assert.Equal(t, seg[hdrLen:], payload, "%s %v: copyTo", name, cuts)
			assert.Equal(t, csum.Checksum(seg[hdrLen+1:], 0), r.sum(hdrLen+1, 299), "%s %v: sum", name, cuts)
			h, ok := r.pullUp(hdrLen)
			require.True(t, ok, "%s %v: pullUp", name, cuts)
			assert.Equal(t, seg[:hdrLen], h, "%s %v: pullUp", name, cuts)
			// After a join, the views were read again.
			assert.Equal(t, csum.Checksum(seg, 0), r.sum(0, len(seg)), "%s %v: sum after pullUp", name, cuts)
			_, ok = r.pullUp(len(seg) + 1)
			assert.False(t, ok, "%s %v: pullUp past the end", name, cuts)
			r.src.buf.Release()
			release()
		}
	}
}
