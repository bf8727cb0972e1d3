package vmnet

import (
	"context"
	"encoding/binary"
	"net"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/framed"
)

// vm is a guest's network stack whose NIC is a unix socket: a hyperkit
// stream (2-byte little-endian lengths), as rootlesskit's child and
// gvisor-tap-vsock's stdio speak it, or one frame per datagram, as vfkit
// does. Frames to the gateway are written one per writev, frames from it
// read by framed.
type vm struct {
	s      *stack.Stack
	ch     *channel.Endpoint
	conn   net.Conn
	format framed.Format
	done   chan error // the reader's end
}

// vmAddr is the guest's address, as rootlesskit gives its child.
var vmAddr = tcpip.AddrFrom4([4]byte{10, 0, 2, 100})

// newVM starts a guest with MTU mtu on conn, framed as format, until ctx
// ends.
func newVM(ctx context.Context, conn net.Conn, format framed.Format, mtu uint32) (*vm, error) {
	v := &vm{
		s: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
		}),
		ch:     channel.New(512, mtu, "\x5a\x94\xef\xe4\x0c\xee"),
		conn:   conn,
		format: format,
		done:   make(chan error, 1),
	}
	if err := v.s.CreateNIC(1, ethernet.New(v.ch)); err != nil {
		return nil, errorf("CreateNIC: %s", err)
	}
	if err := v.s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: vmAddr, PrefixLen: 24},
	}, stack.AddressProperties{}); err != nil {
		return nil, errorf("AddProtocolAddress: %s", err)
	}
	subnet := tcpip.AddressWithPrefix{Address: vmAddr, PrefixLen: 24}.Subnet()
	v.s.SetRouteTable([]tcpip.Route{{Destination: subnet, NIC: 1}})
	r, err := framed.NewReader(conn, framed.Config{Format: format, MaxFrame: int(mtu) + 14}, v)
	if err != nil {
		return nil, err
	}
	go func() {
		defer r.Close()
		for {
			if err := r.ReadBatch(); err != nil {
				v.done <- err
				return
			}
		}
	}()
	go v.transmit(ctx)
	return v, nil
}

// DeliverFragments implements rxbatch.FragmentDispatcher: the frame goes
// to the Ethernet endpoint, which consumes its header.
func (v *vm) DeliverFragments(proto tcpip.NetworkProtocolNumber, _ int, frame buffer.Buffer) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: frame})
	v.ch.InjectInbound(proto, pkt)
	pkt.DecRef()
}

// transmit writes the guest's frames to the socket until ctx ends or a
// write fails.
func (v *vm) transmit(ctx context.Context) {
	var prefix [2]byte
	for {
		pkt := v.ch.ReadContext(ctx)
		if pkt == nil {
			return
		}
		frame := pkt.ToView()
		binary.LittleEndian.PutUint16(prefix[:], uint16(frame.Size()))
		bufs := net.Buffers{prefix[:], frame.AsSlice()}
		if v.format == framed.Datagram {
			bufs = bufs[1:]
		}
		_, err := bufs.WriteTo(v.conn)
		frame.Release()
		pkt.DecRef()
		if err != nil {
			return
		}
	}
}

// close stops the guest.
func (v *vm) close() {
	v.conn.Close()
	v.s.Close()
	v.s.Wait()
}
