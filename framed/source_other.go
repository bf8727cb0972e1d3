//go:build !linux

package framed

import (
	"errors"
	"fmt"
	"io"
)

var errNotSocket = errors.New("framed: Datagram reads a socket on Linux only")

// newSource returns a source that reads conn with Read.
func newSource(conn io.Reader, dgram bool) (source, error) {
	if dgram {
		return nil, fmt.Errorf("%w: %w", errNotSocket, ErrInvalidConfig)
	}
	return readerSource{conn}, nil
}
