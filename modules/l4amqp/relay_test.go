package l4amqp

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"

	"github.com/caddyprelude/prelude/amqp"
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
	n, err := copyFrames(clientW, brokerR, &tr)
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
