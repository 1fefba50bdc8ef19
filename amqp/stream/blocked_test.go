package stream

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestBlockedConnectionHoldsPublishing: while the broker has blocked the
// connection (connection.blocked, delivered through NotifyBlocked to
// transport.setBlocked), a stream publishes nothing; writes wait in the
// window and flow when the block lifts. Blocking the real broker (a memory
// alarm) would stall every other test using it, so the notification is
// injected where amqp091-go delivers it.
func TestBlockedConnectionHoldsPublishing(t *testing.T) {
	e2e.RequireRabbit(t)
	dial := func() *amqp.Connection {
		c, err := amqp.Dial(e2e.URL(e2e.RabbitAddr, "/"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	dconn, lconn := dial(), dial()
	queue := "prelude-stream-blocked-" + time.Now().Format("150405.000000000")
	ln, err := Config{}.NewListener(lconn, queue)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := DialAMQP(ctx, dconn, queue)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	tr := d.(*Conn).t
	tr.setBlocked(true)
	if _, err := d.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	_ = a.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	var nerr net.Error
	if n, err := a.Read(buf); !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("read %q, %v while the publisher is blocked; want nothing", buf[:n], err)
	}
	tr.setBlocked(false)
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := a.Read(buf); err != nil || string(buf[:n]) != "held" {
		t.Fatalf("after the block lifted: %q, %v", buf[:n], err)
	}
}
