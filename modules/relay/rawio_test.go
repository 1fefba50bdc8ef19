package relay

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawIOMovesEveryByte: a write larger than the socket buffers waits
// for the reader and arrives whole; the reader sees EOF after the peer's
// half-close.
func TestRawIOMovesEveryByte(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := RawIO(a), RawIO(b)
	if ra == io.ReadWriter(a) || rb == io.ReadWriter(b) {
		t.Fatal("a TCP connection did not get raw I/O")
	}
	want := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	errc := make(chan error, 1)
	go func() {
		n, err := ra.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		_ = a.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want the %d written", len(got), len(want))
	}
}

// TestRawIOHonoursDeadlines: a deadline set on the connection ends a raw
// read waiting for bytes, as it ends the connection's own Read.
func TestRawIOHonoursDeadlines(t *testing.T) {
	a, _ := tcpPair(t)
	_ = a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := RawIO(a).Read(make([]byte, 10))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
}

// TestRawIOLeavesOtherConnsAlone: what is not a *net.TCPConn (TLS, pipes)
// is returned as it is.
func TestRawIOLeavesOtherConnsAlone(t *testing.T) {
	c, d := net.Pipe()
	defer c.Close()
	defer d.Close()
	if RawIO(c) != io.ReadWriter(c) {
		t.Fatal("a pipe got raw I/O")
	}
}
