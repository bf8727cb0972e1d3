package iperf

import (
	"bytes"
	"context"
	"io"
	"os"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// TestSenderRecoversTailLossInFewTimeouts is issue #13 part 3: a run of
// segments at the tail of a flight that never reaches the receiver (the
// sender's own link dropping them on a full socketpair, with nothing sent
// after them getting through) leaves the receiver nothing to SACK. After
// the retransmission timeout gVisor's RACK marks the whole flight lost and
// enters SACK recovery, but its pipe (SetPipe) still counts every segment
// the receiver never SACKed as in flight, so the sender retransmits two
// segments per timeout: 0.2 s per two segments, tens of seconds for a tail
// of some hundred. The sender stack of the harness must recover such a
// tail with a timeout or two. The check counts timeouts, not time.
//
// It fails at the gVisor version in go.mod (8 timeouts for 40 segments, 145
// for 300; with RACK off, 3 and 90), so it runs only with
// NETLRO_GVISOR_TAIL_LOSS=1, until gVisor's sender is fixed.
func TestSenderRecoversTailLossInFewTimeouts(t *testing.T) {
	if os.Getenv("NETLRO_GVISOR_TAIL_LOSS") == "" {
		t.Skip("gVisor's sender needs a timeout per two segments of a lost tail (issue #13 part 3); set NETLRO_GVISOR_TAIL_LOSS=1 to run")
	}
	const (
		mtu     = 1500
		mss     = mtu - header.IPv4MinimumSize - header.TCPMinimumSize - 12 // with timestamps
		segs    = 100                                                       // segments sent
		dropped = 40                                                        // the tail of the flight, lost once each
	)
	sndEP := channel.New(256, mtu, "")
	rcvEP := channel.New(256, mtu, "")
	snd, err := newStack(sndEP, stack.NICOptions{}, SenderAddr4)
	if err != nil {
		t.Fatal(err)
	}
	defer snd.Destroy()
	rcv, err := NewStack(rcvEP, ReceiverAddr4)
	if err != nil {
		t.Fatal(err)
	}
	defer rcv.Destroy()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	// The link loses the first transmission of the 30th segment, which
	// puts the sender in SACK recovery, and that of every segment from the
	// 60th on: the tail of the flight, as a full socketpair drops it, so
	// that nothing sent after the loss is left to be SACKed. Every
	// retransmission passes.
	var (
		mu   sync.Mutex
		isn  uint32
		syn  bool
		seen = map[uint32]bool{}
		lost int
	)
	pass := func(pkt *stack.PacketBuffer) bool {
		ip := header.IPv4(pkt.ToView().AsSlice())
		tcp := header.TCP(ip.Payload())
		mu.Lock()
		defer mu.Unlock()
		if tcp.Flags()&header.TCPFlagSyn != 0 {
			isn, syn = tcp.SequenceNumber(), true
			return true
		}
		if !syn || len(tcp.Payload()) == 0 {
			return true
		}
		i := (tcp.SequenceNumber() - isn - 1) / mss // the segment's index
		if seen[i] {
			return true
		}
		seen[i] = true
		if i == 29 || i >= segs-dropped {
			lost++
			return false
		}
		return true
	}
	forward := func(from, to *channel.Endpoint, filter func(*stack.PacketBuffer) bool) {
		defer wg.Done()
		for {
			pkt := from.ReadContext(ctx)
			if pkt == nil {
				return
			}
			if filter == nil || filter(pkt) {
				in := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt.ToView().AsSlice())})
				to.InjectInbound(header.IPv4ProtocolNumber, in)
				in.DecRef()
			}
			pkt.DecRef()
		}
	}
	wg.Add(2)
	go forward(sndEP, rcvEP, pass)
	go forward(rcvEP, sndEP, nil)

	ln, err := ListenTCP(rcv, ReceiverAddr4, Port, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := gonet.DialContextTCP(ctx, snd, tcpip.FullAddress{NIC: nicID, Addr: ReceiverAddr4, Port: Port}, header.IPv4ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("netlro13"), segs*mss/8)
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("received %d bytes, want the %d sent", len(b), len(want))
	}
	st := snd.Stats().TCP
	t.Logf("sender: timeouts %d, retransmits %d, SACK recoveries %d, fast retransmits %d, slow-start retransmits %d, TLP recoveries %d",
		st.Timeouts.Value(), st.Retransmits.Value(), st.SACKRecovery.Value(), st.FastRetransmit.Value(), st.SlowStartRetransmits.Value(), st.TLPRecovery.Value())
	mu.Lock()
	defer mu.Unlock()
	if lost != dropped+1 {
		t.Fatalf("the link dropped %d frames, want %d", lost, dropped+1)
	}
	if to := st.Timeouts.Value(); to > 2 {
		t.Errorf("the sender needed %d retransmission timeouts for a tail of %d lost segments, want at most 2", to, dropped)
	}
}
