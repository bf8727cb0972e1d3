package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// key is a Curve25519 key pair, hex-encoded as wireguard-go's UAPI wants.
type key struct{ Private, Public string }

func newKey() (key, error) {
	var priv [32]byte
	if _, err := rand.Read(priv[:]); err != nil {
		return key{}, err
	}
	// Clamping as RFC 7748 section 5 and wg genkey do.
	priv[0] &= 248
	priv[31] = (priv[31] & 127) | 64
	pub, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return key{}, err
	}
	return key{Private: hex.EncodeToString(priv[:]), Public: hex.EncodeToString(pub)}, nil
}

// Tunnel addresses: the sender is .1, the receiver .2.
const (
	senderV4   = "10.77.0.1"
	receiverV4 = "10.77.0.2"
	senderV6   = "fd77::1"
	receiverV6 = "fd77::2"
	tunnelMTU  = 1420 // wireguard-go's default
	dataPort   = 5201
)

// newWG starts a wireguard-go device on dev with bind, listening on a free UDP port, with one peer.
// endpoint is the peer's UDP address, or empty to learn it from the
// handshake. It returns the device and its UDP port.
func newWG(dev tun.Device, bind conn.Bind, priv, peerPub, endpoint string, allowed []string) (*device.Device, int, error) {
	wg := device.NewDevice(dev, bind, device.NewLogger(device.LogLevelSilent, ""))
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "private_key=%s\nlisten_port=0\npublic_key=%s\n", priv, peerPub)
	if endpoint != "" {
		fmt.Fprintf(&cfg, "endpoint=%s\n", endpoint)
	}
	for _, a := range allowed {
		fmt.Fprintf(&cfg, "allowed_ip=%s\n", a)
	}
	if err := wg.IpcSet(cfg.String()); err != nil {
		wg.Close()
		return nil, 0, fmt.Errorf("wireguard config: %w", err)
	}
	if err := wg.Up(); err != nil {
		wg.Close()
		return nil, 0, fmt.Errorf("wireguard up: %w", err)
	}
	port, err := listenPort(wg)
	if err != nil {
		wg.Close()
		return nil, 0, err
	}
	return wg, port, nil
}

func listenPort(wg *device.Device) (int, error) {
	get, err := wg.IpcGet()
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(strings.NewReader(get))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, fmt.Errorf("wireguard: no listen_port in %q", get)
}

// countingBind is wireguard-go's bind, counting what each Send call sends:
// the batches that the bind then coalesces with UDP GSO.
type countingBind struct {
	conn.Bind
	sends, sent, maxSend atomic.Uint64
}

func (b *countingBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	b.sends.Add(1)
	b.sent.Add(uint64(len(bufs)))
	setMax(&b.maxSend, uint64(len(bufs)))
	return b.Bind.Send(bufs, ep)
}

func (b *countingBind) sendBatches() batches {
	return batches{b.sends.Load(), b.sent.Load(), b.maxSend.Load()}
}
