package lrotun_test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/netip"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/netlro/netlro/examples/wireguard/lrotun"
)

// end is one side of the tunnel: a netstack whose NIC is an lrotun.Device
// that wireguard-go reads and writes.
type end struct {
	s  *stack.Stack
	wg *device.Device
}

// newEnd makes a stack with addr, puts an lrotun.Device under it and starts
// wireguard-go on the device with one peer.
func newEnd(addr, priv, peerPub, peerAddr, peerEndpoint string) (*end, int) {
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol},
	})
	dev, err := lrotun.New(s, 1, lrotun.Options{MTU: 1420})
	if err != nil {
		log.Fatal(err)
	}
	s.AddProtocolAddress(1, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddrFromSlice(netip.MustParseAddr(addr).AsSlice()).WithPrefix(),
	}, stack.AddressProperties{})
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})

	wg := device.NewDevice(dev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	cfg := fmt.Sprintf("private_key=%s\nlisten_port=0\npublic_key=%s\nallowed_ip=%s/32\n", priv, peerPub, peerAddr)
	if peerEndpoint != "" {
		cfg += "endpoint=" + peerEndpoint + "\n"
	}
	if err := wg.IpcSet(cfg); err != nil {
		log.Fatal(err)
	}
	if err := wg.Up(); err != nil {
		log.Fatal(err)
	}
	var port int
	get, _ := wg.IpcGet()
	for _, line := range strings.Split(get, "\n") {
		fmt.Sscanf(line, "listen_port=%d", &port)
	}
	return &end{s: s, wg: wg}, port
}

func (e *end) close() {
	e.wg.Close() // closes the lrotun.Device
	e.s.Destroy()
}

// keyPair returns a Curve25519 key pair in the hex form wireguard-go's
// configuration takes.
func keyPair() (priv, pub string) {
	var k [32]byte
	rand.Read(k[:])
	k[0] &= 248
	k[31] = k[31]&127 | 64
	p, _ := curve25519.X25519(k[:], curve25519.Basepoint)
	return hex.EncodeToString(k[:]), hex.EncodeToString(p)
}

// Two netstacks talk TCP through a WireGuard tunnel over loopback UDP; the
// receiving NIC merges each batch wireguard-go decrypted.
func Example() {
	privA, pubA := keyPair()
	privB, pubB := keyPair()
	b, portB := newEnd("10.0.0.2", privB, pubA, "10.0.0.1", "")
	defer b.close()
	a, _ := newEnd("10.0.0.1", privA, pubB, "10.0.0.2", fmt.Sprintf("127.0.0.1:%d", portB))
	defer a.close()

	addrB := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFromSlice(netip.MustParseAddr("10.0.0.2").AsSlice()), Port: 80}
	ln, err := gonet.ListenTCP(b.s, addrB, ipv4.ProtocolNumber)
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := gonet.DialTCP(a.s, addrB, ipv4.ProtocolNumber)
		if err != nil {
			log.Fatal(err)
		}
		c.Write([]byte("hello through WireGuard"))
		c.Close()
	}()
	c, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	msg, _ := io.ReadAll(c)
	fmt.Println(string(msg))
	// Output: hello through WireGuard
}
