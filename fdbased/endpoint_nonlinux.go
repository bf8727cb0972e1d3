//go:build !linux

package fdbased

import (
	"errors"
	"fmt"
	"runtime"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// endpointSys is empty: without Linux there is nothing to read.
type endpointSys struct{}

// sources implements Endpoint.Sources: without Linux there are none.
func (endpointSys) sources() []SourceChoice { return nil }

// newEndpoint fails: the endpoint needs Linux's recvmmsg, sendmmsg and
// eventfd.
func newEndpoint(*Options) (*Endpoint, error) {
	return nil, fmt.Errorf("fdbased: %s: %w", runtime.GOOS, errors.ErrUnsupported)
}

// Attach implements stack.LinkEndpoint.Attach. Without Linux no Endpoint
// can be made, so it does nothing.
func (*Endpoint) Attach(stack.NetworkDispatcher) {}

// Close implements stack.LinkEndpoint.Close. Without Linux it does
// nothing.
func (*Endpoint) Close() {}

// WritePackets implements stack.LinkWriter.WritePackets. Without Linux it
// writes nothing.
func (*Endpoint) WritePackets(stack.PacketBufferList) (int, tcpip.Error) {
	return 0, &tcpip.ErrNotSupported{}
}
