package framed_test

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/netlro/netlro/framed"
)

// printer is a dispatcher that prints each frame and each batch end. An
// lro.Engine, or a switch that learns MAC addresses and hands frames on,
// takes its place in a program.
type printer struct{}

// DeliverFragments implements rxbatch.FragmentDispatcher.
func (printer) DeliverFragments(proto tcpip.NetworkProtocolNumber, linkHeaderLen int, buf buffer.Buffer) {
	fmt.Printf("frame of %d bytes, EtherType %#04x, %d bytes of link header\n", buf.Size(), uint16(proto), linkHeaderLen)
	buf.Release() // it took ownership
}

// Flush implements rxbatch.Flusher.
func (printer) Flush() { fmt.Println("batch end") }

// ethernet returns an Ethernet frame with n bytes of payload.
func ethernet(proto tcpip.NetworkProtocolNumber, n int) []byte {
	f := make([]byte, header.EthernetMinimumSize+n)
	header.Ethernet(f).Encode(&header.EthernetFields{
		SrcAddr: "\x5a\x94\xef\xe4\x0c\xee",
		DstAddr: "\x5a\x94\xef\xe4\x0c\xdd",
		Type:    proto,
	})
	return f
}

// A hyperkit stream (gvisor-tap-vsock's stdio, rootlesskit's child) puts
// each frame after its length, 2 bytes little endian. A Reader of a
// socket would read everything it has ready in one system call and end
// the batch where nothing more is; a Reader of a plain io.Reader ends a
// batch after each Read.
func Example() {
	var stream []byte
	for _, f := range [][]byte{ethernet(header.IPv4ProtocolNumber, 1486), ethernet(header.ARPProtocolNumber, 28)} {
		stream = binary.LittleEndian.AppendUint16(stream, uint16(len(f)))
		stream = append(stream, f...)
	}
	r, err := framed.NewReader(bytes.NewReader(stream), framed.Config{Format: framed.Hyperkit, MaxFrame: 1514}, printer{})
	if err != nil {
		fmt.Println(err)
		return
	}
	for err == nil {
		err = r.ReadBatch()
	}
	fmt.Println(err)

	// A length above MaxFrame stops the Reader.
	r, _ = framed.NewReader(bytes.NewReader([]byte{0xeb, 0x05}), framed.Config{Format: framed.Hyperkit, MaxFrame: 1514}, printer{})
	fmt.Println(r.ReadBatch())
	// Output:
	// frame of 1500 bytes, EtherType 0x0800, 14 bytes of link header
	// frame of 42 bytes, EtherType 0x0806, 14 bytes of link header
	// batch end
	// EOF
	// framed: hyperkit frame at offset 0, length 1515: longer than the largest frame
}
