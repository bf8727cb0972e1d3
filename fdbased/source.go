package fdbased

import "fmt"

// Source is a way of reading an fd's frames. Options.Source forces one;
// its zero value, SourceAuto, lets New pick per fd, and Endpoint.Sources
// says what each fd got and why.
type Source uint8

const (
	// SourceAuto picks, per fd, the cheapest source the fd and the
	// kernel allow: SourceRecvmmsg for a socket; for any other fd (a TAP
	// or TUN device) SourceIOUring where the kernel lets this process
	// use it, SourceRead otherwise; SourceRead with Options.VNetHdr,
	// which reads each TCP super-packet straight into its views where
	// io_uring would copy it.
	SourceAuto Source = iota
	// SourceRecvmmsg reads a socket with recvmmsg(2), a batch per system
	// call. Sockets only.
	SourceRecvmmsg
	// SourceRead reads a non-socket (TAP, TUN) with read(2), or readv(2)
	// with Options.VNetHdr, one frame per system call, straight into the
	// frame's view; forced, a socket too.
	SourceRead
	// SourceIOUring reads a non-socket (TAP, TUN) with one io_uring
	// multishot read into a ring of buffers: one system call per batch,
	// and one copy of each frame into its view. It needs Linux 6.7 and a
	// kernel and seccomp profile that allow io_uring; not with
	// Options.VNetHdr.
	SourceIOUring
	numSources
)

// String returns the source's name: "auto", "recvmmsg", "read" or
// "io_uring".
func (s Source) String() string {
	switch s {
	case SourceAuto:
		return "auto"
	case SourceRecvmmsg:
		return "recvmmsg"
	case SourceRead:
		return "read"
	case SourceIOUring:
		return "io_uring"
	}
	return fmt.Sprintf("Source(%d)", uint8(s))
}

// MarshalText implements encoding.TextMarshaler: the source's name, as
// String gives it.
func (s Source) MarshalText() ([]byte, error) {
	return []byte(s.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler: it takes a name
// String gives.
func (s *Source) UnmarshalText(text []byte) error {
	for src := range numSources {
		if string(text) == src.String() {
			*s = src
			return nil
		}
	}
	return fmt.Errorf("fdbased: unknown source %q: want auto, recvmmsg, read or io_uring", text)
}

// SourceChoice says how the endpoint reads one of its fds, and why.
type SourceChoice struct {
	// FD is the fd, as given in Options.FDs.
	FD int
	// Source is how it is read: never SourceAuto.
	Source Source
	// Why says why that source, in a few words.
	Why string
	// Fallback is why io_uring was not used where SourceAuto would have
	// used it (io_uring_setup refused, a kernel without the multishot
	// read, the ring not set up): the fd is read with read(2) instead.
	// It is nil otherwise. Why gives it as text, also in JSON.
	Fallback error `json:"-"`
}

// String returns the choice in one line, e.g. "fd 7: read (io_uring
// unavailable: ...)".
func (c SourceChoice) String() string {
	return fmt.Sprintf("fd %d: %s (%s)", c.FD, c.Source, c.Why)
}

// The reasons SourceChoice.Why gives.
const (
	whyForced    = "forced by Options.Source"
	whySocket    = "a socket: recvmmsg reads a batch per system call"
	whyRing      = "not a socket, and the kernel allows io_uring: one system call per batch"
	whyVNet      = "VNetHdr: read(2) puts a super-packet straight into its views, io_uring would copy it"
	whyNoRing    = "io_uring unavailable, read(2) instead: "
	whyRingSetup = "io_uring set up failed, read(2) instead: "
)
