package l4amqp

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/relay"
)

// tcpPair returns two ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a, b
}

// TestCopyFramesExact: a mix of small and large frames, written in random
// pieces (both buffer sizes of the adaptive copy), crosses copyFrames byte
// for byte, and the tracker ends at a boundary having counted every frame.
func TestCopyFramesExact(t *testing.T) {
	var stream []byte
	frames := 0
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		size := r.IntN(200)
		if r.IntN(3) == 0 {
			size = 32<<10 + r.IntN(131072)
		}
		payload := make([]byte, size)
		for i := range payload {
			payload[i] = byte(r.Uint32())
		}
		stream = amqp.AppendFrame(stream, amqp.Frame{Type: amqp.FrameBody, Channel: 1, Payload: payload})
		frames++
	}
	brokerW, brokerR := tcpPair(t)
	clientW, clientR := tcpPair(t)
	go func() {
		for i := 0; i < len(stream); {
			k := min(len(stream)-i, 1+r.IntN(100000))
			_, _ = brokerW.Write(stream[i : i+k])
			i += k
		}
		_ = brokerW.Close()
	}()
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(clientR); got <- b }()
	var tr amqp.FrameTracker
	n, err := relay.CopyAdaptive(clientW, brokerR, brokerSeen(&tr, nil))
	_ = clientW.Close()
	if err != nil || n != int64(len(stream)) {
		t.Fatalf("copied %d of %d bytes: %v", n, len(stream), err)
	}
	if b := <-got; !bytes.Equal(b, stream) {
		t.Fatal("the client received different bytes")
	}
	if !tr.AtBoundary() || tr.Frames != uint64(frames) {
		t.Fatalf("tracker: boundary %v, %d frames, want %d", tr.AtBoundary(), tr.Frames, frames)
	}
}

// TestFinishFrame: a graceful sever stops the broker-to-client copy
// wherever its last read ended; finishFrame then forwards exactly the rest
// of that frame — not a byte of the next one — so that the client's stream
// ends at a frame boundary, whether the copy stopped inside the frame's
// 7-byte header or inside its payload, and however the broker's bytes
// arrive. A broker that never completes the frame leaves the tracker off a
// boundary, and the session then sends no Close.
func TestFinishFrame(t *testing.T) {
	payload := bytes.Repeat([]byte("delivery"), 40<<10/8)
	frame := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameBody, Channel: 1, Payload: payload})
	next := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeartbeat})
	for _, stopAt := range []int{3, 7, 8, 1000, len(frame) - 1} {
		brokerW, brokerR := tcpPair(t)
		clientW, clientR := tcpPair(t)
		var tr amqp.FrameTracker
		tr.Feed(frame[:stopAt]) // forwarded before the copy stopped
		rest := append(frame[stopAt:len(frame):len(frame)], next...)
		go func() {
			for i := 0; i < len(rest); i += 1000 {
				_, _ = brokerW.Write(rest[i:min(i+1000, len(rest))])
			}
		}()
		n, err := finishFrame(clientW, brokerR, &tr)
		if err != nil || n != int64(len(frame)-stopAt) || !tr.AtBoundary() {
			t.Fatalf("stopped at %d: forwarded %d, want %d; err %v, at a boundary %v",
				stopAt, n, len(frame)-stopAt, err, tr.AtBoundary())
		}
		got := make([]byte, len(frame)-stopAt+1)
		_ = clientR.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		k, _ := io.ReadAtLeast(clientR, got, len(got)-1)
		if k != len(got)-1 || !bytes.Equal(got[:k], frame[stopAt:]) {
			t.Fatalf("stopped at %d: the client got %d bytes, want the frame's last %d", stopAt, k, len(got)-1)
		}
	}

	brokerW, brokerR := tcpPair(t)
	clientW, _ := tcpPair(t)
	var tr amqp.FrameTracker
	tr.Feed(frame[:1000])
	_, _ = brokerW.Write(frame[1000:2000]) // then nothing
	if _, err := finishFrame(clientW, brokerR, &tr); err == nil || tr.AtBoundary() {
		t.Fatalf("a broker that stalls mid-frame: err %v, at a boundary %v", err, tr.AtBoundary())
	}
}
