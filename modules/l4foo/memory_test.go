package l4foo_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// ackFirst is a server that answers the first request with "ACK 1", then
// holds the connection, reading into a small buffer, until it closes.
func ackFirst(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 64)
	var line []byte
	for !bytes.Contains(line, []byte{'\n'}) {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		line = append(line, buf[:n]...)
	}
	if _, err := io.WriteString(c, "ACK 1\n"); err != nil {
		return
	}
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

// TestIdleConnectionsHoldNoReadBuffers: a proxied connection waiting for
// bytes holds no read buffer. Each of 200 connections that exchanged one
// request and answer and then went quiet adds far less heap (clients,
// server and Caddy together) than the two 32 KiB read buffers each held
// before they were borrowed only while a read has bytes.
func TestIdleConnectionsHoldNoReadBuffers(t *testing.T) {
	const conns = 200
	server := e2e.ServeTCP(t, ackFirst)
	addr := e2e.FreePort(t)
	e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json")))
	exchange := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		answer := make([]byte, len("ACK 1\n"))
		if _, err := fmt.Fprintf(c, "REQ 1 x\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, answer); err != nil || string(answer) != "ACK 1\n" {
			t.Fatalf("answer %q, %v", answer, err)
		}
		return c
	}
	exchange() // the first connection sets up what all share
	time.Sleep(100 * time.Millisecond)
	before := e2e.LiveHeap()
	for i := 0; i < conns; i++ {
		exchange()
	}
	time.Sleep(200 * time.Millisecond) // every copy loop back in its read
	after := e2e.LiveHeap()
	perConn := (int64(after) - int64(before)) / conns
	t.Logf("%d bytes of heap per idle proxied connection (client, server and Caddy)", perConn)
	if perConn > 16<<10 {
		t.Fatalf("%d bytes of heap per idle connection, want under 16 KiB", perConn)
	}
}
