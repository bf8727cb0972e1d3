package framed

import "io"

// maxEmptyReads bounds the calls to an io.Reader that return nothing and
// no error, as bufio does.
const maxEmptyReads = 100

// readerSource reads any io.Reader, one Read per batch: it cannot tell
// whether more is ready, so it says nothing is before every read.
type readerSource struct{ r io.Reader }

// read implements source.
func (s readerSource) read(p []byte, wait bool) (int, error) {
	if !wait {
		return 0, errWouldBlock
	}
	for range maxEmptyReads {
		n, err := s.r.Read(p)
		if n > 0 || err != nil {
			if n > 0 && err == io.EOF {
				err = nil // the next Read says it again
			}
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// readMsgs implements source; Datagram needs a socket, which newSource
// checked.
func (readerSource) readMsgs([]byte, int, []int, bool) (int, error) {
	return 0, errNotSocket
}
