package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t testing.TB) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// readAll reads through r until an error, returning the bytes and the error.
func readAll(r *Reader) ([]byte, error) {
	var got []byte
	for {
		b, err := r.Read(smallBuffers)
		got = append(got, b...)
		if err != nil {
			return got, err
		}
	}
}

// TestReader reads a TCP socket (borrowing buffers only while
// readable) and a net.Pipe (the fallback for other connections) alike:
// first bytes, then the stream, then io.EOF; deadlines apply.
func TestReader(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(t *testing.T) (reader, writer net.Conn)
		raw  bool
	}{
		{"tcp", func(t *testing.T) (net.Conn, net.Conn) { a, b := tcpPair(t); return a, b }, true},
		{"pipe", func(t *testing.T) (net.Conn, net.Conn) {
			a, b := net.Pipe()
			t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
			return a, b
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, wc := tc.pair(t)
			r := NewReader(rc, []byte("REQ 1 "))
			if (r.raw != nil) != tc.raw {
				t.Fatalf("raw reads: %v, want %v", r.raw != nil, tc.raw)
			}
			_ = rc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			if b, err := r.Read(smallBuffers); string(b) != "REQ 1 " || err != nil {
				t.Fatalf("first Read = %q, %v", b, err)
			}
			if b, err := r.Read(smallBuffers); len(b) != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("Read of a silent connection = %q, %v; want the deadline", b, err)
			}
			if r.buf != nil {
				t.Fatal("a read that returned nothing kept a buffer")
			}
			_ = rc.SetReadDeadline(time.Time{})
			go func() {
				_, _ = wc.Write([]byte("abc\n"))
				_, _ = wc.Write([]byte("REQ 2 def\n"))
				_ = wc.Close()
			}()
			got, err := readAll(r)
			if string(got) != "abc\nREQ 2 def\n" || err != io.EOF {
				t.Fatalf("read %q, %v; want the stream, then io.EOF", got, err)
			}
			r.Release()
			if r.buf != nil {
				t.Fatal("Release kept the buffer")
			}
		})
	}
}

// TestReaderReset: a peer's reset is a read error that says so.
func TestReaderReset(t *testing.T) {
	a, b := tcpPair(t)
	r := NewReader(a, nil)
	_ = b.SetLinger(0)
	_, _ = b.Write([]byte("x"))
	_ = b.Close()
	got, err := readAll(r)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read %q, %v; want ECONNRESET", got, err)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "read" {
		t.Fatalf("error %v is not a read OpError", err)
	}
}

// TestReaderDoesNotAllocate: a read from a TCP socket allocates nothing
// (its buffer comes from the pool, its callback is bound once). Under the
// race detector sync.Pool drops a quarter of what is put back, at random,
// so a buffer is allocated again now and then: less than once per read
// on average, which AllocsPerRun rounds down to 0.
func TestReaderDoesNotAllocate(t *testing.T) {
	a, b := tcpPair(t)
	r := NewReader(a, nil)
	msg := []byte("ACK 1\n")
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := b.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got, err := r.Read(smallBuffers); err != nil || len(got) == 0 {
			t.Fatalf("Read = %q, %v", got, err)
		}
		r.Release()
	})
	if allocs > 0 {
		t.Fatalf("%v allocations per read, want none", allocs)
	}
}

// TestReaderLimit: with Limit(n), no Read returns more than n bytes, and
// together they return the stream.
func TestReaderLimit(t *testing.T) {
	a, b := tcpPair(t)
	first := "REQ 0 first bytes\n"
	r := NewReader(a, []byte(first))
	r.Limit(7)
	want := []byte(first + "REQ 1 abcdefghijklmnopqrstuvwxyz\nREQ 2 x\n")
	if _, err := b.Write(want[len(first):]); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	var got []byte
	for {
		p, err := r.Read(smallBuffers)
		if len(p) > 7 {
			t.Fatalf("Read returned %d bytes, over the limit of 7", len(p))
		}
		got = append(got, p...)
		if err != nil {
			break
		}
	}
	if string(got) != string(want) {
		t.Fatalf("read %q, want %q", got, want)
	}
}
