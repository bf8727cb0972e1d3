package testpacket

import (
	"context"
	"crypto/sha256"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Transfer sends data over one TCP connection from tx to rx, which
// listens on addr, closes it, and returns the SHA-256 of what rx read
// up to the sender's FIN. A connection that is not up within a minute,
// or a read that waits longer than one, fails the test, so a transfer
// that stalls cannot hang it.
func Transfer(t testing.TB, tx, rx *stack.Stack, addr tcpip.FullAddress, proto tcpip.NetworkProtocolNumber, data []byte) [sha256.Size]byte {
	t.Helper()
	ln, err := gonet.ListenTCP(rx, addr, proto)
	require.NoError(t, err)
	defer ln.Close()
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := gonet.DialContextTCP(ctx, tx, addr, proto)
		if err != nil {
			errc <- err
			ln.Close() // and Accept returns
			return
		}
		_, err = c.Write(data)
		c.Close()
		errc <- err
	}()
	c, err := ln.Accept()
	if err != nil {
		require.NoError(t, <-errc, "dial")
		require.NoError(t, err, "accept")
	}
	defer c.Close()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)), "hang guard")
	h := sha256.New()
	_, err = io.Copy(h, c)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	return [sha256.Size]byte(h.Sum(nil))
}
