package l4foo_test

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestManyConnectionsLeaveNothing: connections ending every way the handler
// knows — a clean end, a line over max_line, a client that hangs up at
// once, idle_timeout after an answer, idle_timeout with a line left
// unfinished — leave no goroutine behind once the stats say none is active.
func TestManyConnectionsLeaveNothing(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json"),
		map[string]any{"idle_timeout": "1s"}))
	if _, err := footest.Run(addr, footest.ClientOptions{Requests: 1}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c)
	base := runtime.NumGoroutine()

	// dialSend opens a connection, writes s and returns a reader of it.
	dialSend := func(s string) (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Error(err)
			return nil, nil
		}
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(conn, s)
		return conn, bufio.NewReader(conn)
	}
	untilClosed := func(conn net.Conn) {
		defer conn.Close()
		if _, err := io.Copy(io.Discard, conn); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Errorf("waiting for the proxy to close: %v", err)
		}
	}
	endings := []func(){
		func() { // clean
			if _, err := footest.Run(addr, footest.ClientOptions{Requests: 5, Pipelined: true}); err != nil {
				t.Error(err)
			}
		},
		func() { // a line over max_line (1024 here)
			if conn, _ := dialSend("REQ 1 " + strings.Repeat("x", 2000) + "\n"); conn != nil {
				untilClosed(conn)
			}
		},
		func() { // the client hangs up at once
			if conn, _ := dialSend("REQ 1 x\n"); conn != nil {
				_ = conn.Close()
			}
		},
		func() { // idle after an answer
			if conn, r := dialSend("REQ 1 x\n"); conn != nil {
				_, _ = r.ReadString('\n')
				untilClosed(conn)
			}
		},
		func() { // idle with a line unfinished
			if conn, r := dialSend("REQ 1 x\nREQ 2 y"); conn != nil {
				_, _ = r.ReadString('\n')
				untilClosed(conn)
			}
		},
	}
	var wg sync.WaitGroup
	for i := range 100 {
		wg.Add(1)
		go func() { defer wg.Done(); endings[i%len(endings)]() }()
	}
	wg.Wait()
	waitFor := time.Now().Add(10 * time.Second)
	for r := waitIdle(t, c); r.ActiveConns != 0; r = waitIdle(t, c) {
		if time.Now().After(waitFor) {
			t.Fatalf("%d connections still active", r.ActiveConns)
		}
	}
	// Every ending happened as meant.
	if r := waitIdle(t, c); r.InvalidLines != 20 {
		t.Fatalf("%d lines over max_line counted, want 20", r.InvalidLines)
	}
	if n := strings.Count(c.Logs(), `"msg":"foo connection idle"`); n != 40 {
		t.Fatalf("%d connections ended by idle_timeout, want 40", n)
	}
	e2e.WaitGoroutines(t, base, 5*time.Second)
}
