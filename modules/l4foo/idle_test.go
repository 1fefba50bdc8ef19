package l4foo_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// answerOdd is a server that answers odd Seqs only, as one that hangs on
// some requests would.
func answerOdd(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			_, _ = io.Copy(io.Discard, r) // hold the connection until the proxy closes it
			return
		}
		if m, err := foo.ParseLine([]byte(strings.TrimSuffix(line, "\n"))); err == nil && m.Seq%2 == 1 {
			_, _ = fmt.Fprintf(c, "ACK %d\n", m.Seq)
		}
	}
}

// TestIdleTimeoutNAKsWhatIsOutstanding: requests keep the connection alive
// while they flow; once nothing moves for idle_timeout, the proxy NAKs the
// requests the server never answered, saying why, and closes.
func TestIdleTimeoutNAKsWhatIsOutstanding(t *testing.T) {
	server := e2e.ServeTCP(t, answerOdd)
	addr := e2e.FreePort(t)
	cfg := config(addr, server, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"idle_timeout": "800ms"})
	c := e2e.StartCaddy(t, cfg)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	// Twenty requests 100 ms apart: two seconds in all, over two idle
	// timeouts, with 700 ms to spare for a slow machine between two of them.
	// last is taken before the write: the proxy cannot see a request
	// before it is written, but this goroutine may run late after it.
	var last time.Time
	for seq := 1; seq <= 20; seq++ {
		if seq > 1 {
			time.Sleep(100 * time.Millisecond)
		}
		last = time.Now()
		if _, err := fmt.Fprintf(conn, "REQ %d x\n", seq); err != nil {
			t.Fatalf("request %d: the connection was closed while requests flowed: %v", seq, err)
		}
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("reading answers: %v (got %q)", err, got)
	}
	waited := time.Since(last)
	var want strings.Builder
	for seq := 1; seq <= 20; seq += 2 {
		fmt.Fprintf(&want, "ACK %d\n", seq)
	}
	for seq := 2; seq <= 20; seq += 2 {
		fmt.Fprintf(&want, "NAK %d proxy: no answer within 800ms\n", seq)
	}
	if string(got) != want.String() {
		t.Fatalf("client got:\n%s\nwant:\n%s", got, want.String())
	}
	if waited < 800*time.Millisecond || waited > 4*time.Second {
		t.Fatalf("the NAKs came %v after the last request; idle_timeout is 800ms", waited)
	}
	r := waitIdle(t, c)
	if r.MsgReq != 20 || r.MsgAck != 10 || r.MsgNak != 0 || r.ProxyNAKs != 10 || r.InvalidLines != 0 {
		t.Fatalf("stats %+v: want 20 requests, 10 server ACKs, 10 proxy NAKs", r)
	}
	c.WaitMetric(t, `caddy_layer4_foo_proxy_naks_total{stats="default"} 10`)
}

// TestIdleTimeoutClosesASilentConnection: with nothing outstanding the
// proxy just closes, after about idle_timeout.
func TestIdleTimeoutClosesASilentConnection(t *testing.T) {
	server := e2e.ServeTCP(t, answerOdd)
	addr := e2e.FreePort(t)
	cfg := config(addr, server, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"idle_timeout": "200ms"})
	e2e.StartCaddy(t, cfg)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, _ = conn.Write([]byte("REQ 1 x\n"))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "ACK 1\n" {
		t.Fatalf("got %q, %v; want the server's ACK, then the close", got, err)
	}
	if took := time.Since(start); took < 200*time.Millisecond || took > 2*time.Second {
		t.Fatalf("closed after %v with idle_timeout 200ms", took)
	}
}

// TestIdleTimeoutEndsAClientThatStopsReading: answers back up behind a
// client that no longer reads; once nothing has moved for idle_timeout the
// proxy gives up on the stuck write and ends the connection.
func TestIdleTimeoutEndsAClientThatStopsReading(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"idle_timeout": "300ms"}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.(*net.TCPConn).SetReadBuffer(4096)
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	w := bufio.NewWriter(conn)
	for seq := 1; ; seq++ { // until the proxy ends the connection
		if _, err := fmt.Fprintf(w, "REQ %d %s\n", seq, strings.Repeat("x", 64)); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("after 10 s the proxy still held the connection of a client that reads nothing: %+v", stats(t, c))
			}
			break
		}
		if seq > 2_000_000 {
			t.Fatal("the proxy kept taking requests from a client that reads nothing")
		}
	}
	for deadline := time.Now().Add(5 * time.Second); stats(t, c).ActiveConns != 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the connection is still open 5 s after its client stopped reading: %+v", stats(t, c))
		}
	}
}

// answerLate is a server that answers every request a second after it came.
func answerLate(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	var mu sync.Mutex
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			time.Sleep(2 * time.Second) // let the late answers go out
			return
		}
		if m, err := foo.ParseLine([]byte(strings.TrimSuffix(line, "\n"))); err == nil {
			time.AfterFunc(time.Second, func() {
				mu.Lock()
				defer mu.Unlock()
				_, _ = fmt.Fprintf(c, "ACK %d\n", m.Seq)
			})
		}
	}
}

// TestIdleTimeoutSilentServerWhileClientSends: the server stays silent for
// longer than idle_timeout while the client keeps sending; its answers must
// still get through when they come.
func TestIdleTimeoutSilentServerWhileClientSends(t *testing.T) {
	server := e2e.ServeTCP(t, answerLate)
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"idle_timeout": "300ms"}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	got := make(chan string, 1)
	go func() { b, _ := io.ReadAll(conn); got <- string(b) }()
	for seq := 1; seq <= 12; seq++ { // every 100 ms: the connection is never idle
		if _, err := fmt.Fprintf(conn, "REQ %d x\n", seq); err != nil {
			t.Fatalf("request %d: %v", seq, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	var want strings.Builder
	for seq := 1; seq <= 12; seq++ {
		fmt.Fprintf(&want, "ACK %d\n", seq)
	}
	if s := <-got; s != want.String() {
		t.Fatalf("client got:\n%s\nwant every ACK, then the idle close:\n%s", s, want.String())
	}
	if r := waitIdle(t, c); r.MsgAck != 12 || r.ProxyNAKs != 0 {
		t.Fatalf("stats %+v", r)
	}
}

// TestIdleTimeoutOff: a negative idle_timeout (Caddyfile "off") never
// closes a silent connection.
func TestIdleTimeoutOff(t *testing.T) {
	server := e2e.ServeTCP(t, answerOdd)
	addr := e2e.FreePort(t)
	e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"idle_timeout": "-1s"}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	for _, seq := range []int{1, 3} {
		if _, err := fmt.Fprintf(conn, "REQ %d x\n", seq); err != nil {
			t.Fatal(err)
		}
		if line, err := r.ReadString('\n'); err != nil || line != fmt.Sprintf("ACK %d\n", seq) {
			t.Fatalf("request %d: %q, %v", seq, line, err)
		}
	}
	time.Sleep(1200 * time.Millisecond) // silent for longer than |-1s|
	if _, err := fmt.Fprintf(conn, "REQ 5 x\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "ACK 5\n" {
		t.Fatalf("after 1.2 s of silence: %q, %v", line, err)
	}
}
