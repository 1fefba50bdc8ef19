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
	pool := vhosts([]string{e2e.RabbitAddr}, e2e.VhostA)
	pool["pool"] = map[string]any{}
	c := e2e.StartCaddyProcess(t, bin, "", e2e.Layer4(addr, route(handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB), pool))))
	var closed []chan *amqp091.Error
	for _, vhost := range []string{e2e.VhostB, e2e.VhostA} { // relayed, pooled
		conn := dial(t, e2e.URL(addr, vhost))
		closed = append(closed, conn.NotifyClose(make(chan *amqp091.Error, 1)))
		roundTrip(t, conn, 5)
	}
	c.Signal(t, syscall.SIGTERM)
	for i, ch := range closed {
		select {
		case err := <-ch:
			if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "shutting down") {
				t.Fatalf("client %d closed with %v, want 320 proxy shutting down", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("client %d was not closed at shutdown", i)
		}
	}
	if !c.Exited(5 * time.Second) {
		t.Fatal("Caddy did not exit")
	}
	// The wait is not silent: the log says how many sessions, for how long.
	if out := c.Logs(); !strings.Contains(out, "draining AMQP sessions before exit") || !strings.Contains(out, `"sessions":2`) || !strings.Contains(out, `"up_to":0.5`) {
		t.Fatalf("no drain line naming 2 sessions and 0.5 s in the log:\n%s", out)
	}
}
