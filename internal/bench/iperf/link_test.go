package iperf

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestSenderLinkPushesBack: a burst larger than the socketpair holds is
// written whole once the far end reads, where gVisor's fdbased alone
// drops what does not fit (ErrNoBufferSpace) and so loses the tail of a
// flight: the start of issue #13's minute-long stalls.
func TestSenderLinkPushesBack(t *testing.T) {
	fds, err := Socketpair()
	require.NoError(t, err)
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	ep, err := NewSenderLink(fds[0], DefaultMTU)
	require.NoError(t, err)
	defer ep.Close()

	// Far more than the socket buffers hold (a few MiB at most).
	const burst, size = 8192, 1400
	var pkts stack.PacketBufferList
	for range burst {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(make([]byte, size))})
		pkt.NetworkProtocolNumber = header.IPv4ProtocolNumber
		pkts.PushBack(pkt)
	}
	defer pkts.DecRef()

	read := make(chan int)
	wrote := make(chan struct{})
	go func() {
		// Let the writer fill the socket first. Only whether gVisor's
		// fdbased alone would fail here depends on this wait.
		time.Sleep(200 * time.Millisecond)
		n := 0
		b := make([]byte, 2*size)
		for n < burst {
			// Look at wrote before the read, not after: a read that found
			// the socket empty may have raced with the writer's last
			// packets, and only a read after the writer is done can say
			// that nothing is left.
			var done bool
			select {
			case <-wrote:
				done = true
			default:
			}
			if _, err := unix.Read(fds[1], b); err == nil {
				n++
				continue
			}
			if done {
				break
			}
			runtime.Gosched()
		}
		read <- n
	}()
	require.NoError(t, unix.SetNonblock(fds[1], true))
	sent, werr := ep.WritePackets(pkts)
	close(wrote)
	assert.Nil(t, werr)
	assert.Equal(t, burst, sent, "written")
	assert.Equal(t, burst, <-read, "read at the far end")
}
