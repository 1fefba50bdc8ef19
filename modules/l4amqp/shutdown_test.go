package l4amqp_test

import (
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestShutdownClosesWith320: on SIGTERM Caddy waits for AMQP sessions for
// the drain period (1s here, PRELUDE_DRAIN_TIMEOUT), then sends the clients
// still connected Close 320 "proxy shutting down" instead of a reset.
func TestShutdownClosesWith320(t *testing.T) {
	e2e.RequireRabbit(t)
	bin := e2e.BuildCaddy(t, "../..")
	t.Setenv("PRELUDE_DRAIN_TIMEOUT", "1500ms")
	addr := e2e.FreePort(t)
	c := e2e.StartCaddyProcess(t, bin, "", e2e.Layer4(addr, route(handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)))))
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	roundTrip(t, conn, 5)
	c.Signal(t, syscall.SIGTERM)
	select {
	case err := <-closed:
		if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "shutting down") {
			t.Fatalf("client closed with %v, want 320 proxy shutting down", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client was not closed at shutdown")
	}
	if !c.Exited(5 * time.Second) {
		t.Fatal("Caddy did not exit")
	}
}
