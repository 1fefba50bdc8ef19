package relay

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestIdleTLSCopiesHoldSmallBuffers: copies that read a TLS connection
// (caddy-l4's tls handler in front, or a TLS upstream) block in the TLS
// read with the buffer they borrowed. After a bulk burst, then quiet, each
// holds at most a small buffer, never the 1 MiB one bulk reads use: a TLS
// read returns at most one record (16 KiB), so a larger buffer never helps.
func TestIdleTLSCopiesHoldSmallBuffers(t *testing.T) {
	const copies, burst = 20, 4 << 20
	ca := e2e.NewTestCA(t)
	type copyEnds struct {
		in  *tls.Conn // the client writes here
		src *tls.Conn // the copy reads here
		dst *net.TCPConn
		out *net.TCPConn
	}
	ends := make([]copyEnds, copies)
	for i := range ends {
		a, b := tcpPair(t)
		in := tls.Client(a, &tls.Config{RootCAs: ca.Pool, ServerName: "broker.test"})
		src := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{ca.Server}})
		done := make(chan error, 1)
		go func() { done <- src.Handshake() }()
		if err := in.Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		dst, out := tcpPair(t)
		ends[i] = copyEnds{in, src, dst, out}
	}
	chunk := make([]byte, 64<<10)
	before := e2e.LiveHeap()
	for i, e := range ends {
		// Bursts of different lengths end on reads of different sizes.
		size := burst + i*16<<10
		go func() { _, _ = CopyAdaptive(e.dst, e.src, nil) }()
		go func() {
			for sent := 0; sent < size; sent += len(chunk) {
				_, _ = e.in.Write(chunk[:min(len(chunk), size-sent)])
			}
		}()
		if _, err := io.CopyN(io.Discard, e.out, int64(size)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	perCopy := (int64(e2e.LiveHeap()) - int64(before)) / copies
	t.Logf("%d bytes of heap per idle copy (crypto/tls's own buffers included)", perCopy)
	if perCopy > 128<<10 {
		t.Fatalf("%d bytes of heap per idle copy after a burst, want under 128 KiB", perCopy)
	}
}
