package l4amqpstream_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestManyStreamsLeaveNothing: streams ending every way a client can end
// them — a clean half-close after its echo, an abrupt close mid-stream,
// a refusal because nobody listens on the queue — leave no goroutine
// behind, on the dialing side and on the listening side alike (both run
// in this Caddy).
func TestManyStreamsLeaveNothing(t *testing.T) {
	e2e.RequireRabbit(t)
	port, orphan, queue := e2e.FreePort(t), e2e.FreePort(t), uniqueQueue()
	broker := e2e.URL(e2e.RabbitAddr, "/")
	c := e2e.StartCaddyfile(t, fmt.Sprintf(`{
	amqp_brokers {
		main %s
	}
	layer4 {
		%s {
			route {
				amqp_tunnel %s %s
			}
		}
		%s {
			route {
				amqp_tunnel %s %s
			}
		}
		amqp/%s@main {
			route {
				proxy %s
			}
		}
	}
}
`, broker, port, broker, queue, orphan, broker, uniqueQueue(), queue, startEcho(t)))
	c.NoLeak(e2e.TestPassword)
	waitListening(t, port)
	time.Sleep(200 * time.Millisecond)
	base := runtime.NumGoroutine()

	payload := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	clean := func() {
		conn, err := net.Dial("tcp", port)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
		go func() { _, _ = conn.Write(payload); _ = conn.(*net.TCPConn).CloseWrite() }()
		if got, err := io.ReadAll(conn); err != nil || !bytes.Equal(got, payload) {
			t.Errorf("echo: %d of %d bytes, %v", len(got), len(payload), err)
		}
	}
	abrupt := func() {
		conn, err := net.Dial("tcp", port)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = conn.Write(payload[:1000])
		_ = conn.(*net.TCPConn).SetLinger(0)
		_ = conn.Close()
	}
	refused := func() {
		conn, err := net.Dial("tcp", orphan)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := conn.Read(make([]byte, 1)); err == nil {
			t.Error("a stream to a queue nobody listens on carried a byte")
		}
	}
	endings := []func(){clean, abrupt, refused}
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() { defer wg.Done(); endings[i%len(endings)]() }()
	}
	wg.Wait()
	e2e.WaitGoroutines(t, base, 15*time.Second)
}
