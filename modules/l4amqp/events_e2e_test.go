package l4amqp_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// recorder is an events handler that records what it receives.
type recorder struct{}

var (
	recMu    sync.Mutex
	recorded []caddy.Event
)

func (recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.prelude_test_amqp_recorder", New: func() caddy.Module { return new(recorder) }}
}

func (*recorder) Handle(_ context.Context, e caddy.Event) error {
	recMu.Lock()
	recorded = append(recorded, e)
	recMu.Unlock()
	return nil
}

func init() { caddy.RegisterModule(recorder{}) }

var _ caddyevents.Handler = (*recorder)(nil)

func waitEvent(t *testing.T, name string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		recMu.Lock()
		for _, e := range recorded {
			if e.Name() == name && match(e.Data) {
				recMu.Unlock()
				return e.Data
			}
		}
		recMu.Unlock()
	}
	t.Fatalf("no %s event", name)
	return nil
}

// TestEvents: session open and close, and a member going down and up, are
// Caddy events.
func TestEvents(t *testing.T) {
	e2e.RequireRabbit(t)
	member := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	addr := e2e.FreePort(t)
	v := vhosts([]string{member.Addr}, e2e.VhostB)
	v["health_interval"], v["health_timeout"] = "100ms", "300ms"
	cfg := e2e.Layer4(addr, route(handler(v)))
	cfg["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": []any{map[string]any{
		"events":   []string{"amqp_session_open", "amqp_session_close", "upstream_unhealthy", "upstream_healthy"},
		"handlers": []any{map[string]any{"handler": "prelude_test_amqp_recorder"}},
	}}}
	recMu.Lock()
	recorded = nil
	recMu.Unlock()
	c := e2e.StartCaddy(t, cfg)
	c.NoLeak(e2e.TestPassword)

	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	open := waitEvent(t, "amqp_session_open", func(d map[string]any) bool { return d["vhost"] == e2e.VhostB })
	if open["upstream"] != member.Addr || open["user"] != e2e.TestUser {
		t.Fatalf("open event: %v", open)
	}
	_ = conn.Close()
	closed := waitEvent(t, "amqp_session_close", func(d map[string]any) bool { return d["id"] == open["id"] })
	if closed["ended"] != "clean" {
		t.Fatalf("close event: %v", closed)
	}

	// Take the member down (its port refuses), then bring it back.
	member.Close()
	waitEvent(t, "upstream_unhealthy", func(d map[string]any) bool { return d["upstream"] == member.Addr })
	ln, err := net.Listen("tcp", member.Addr)
	if err != nil {
		t.Fatalf("could not listen on %s again: %v", member.Addr, err)
	}
	e2e.StartRelayOn(t, ln, e2e.RabbitAddr)
	waitEvent(t, "upstream_healthy", func(d map[string]any) bool { return d["upstream"] == member.Addr })
}
