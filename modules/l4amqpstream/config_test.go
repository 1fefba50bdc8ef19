package l4amqpstream_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestBrokerNameErrors: a handler or listener that names a broker the
// amqp_brokers app does not have, or names none among several, or any
// without the app, fails to load with an error that says which and what
// there is — never with the password of a broker URL.
func TestBrokerNameErrors(t *testing.T) {
	brokers := func(names ...string) map[string]any {
		m := map[string]any{}
		for _, n := range names {
			m[n] = map[string]any{"url": "amqp://tunnel:s3cret-pw@127.0.0.1:1/"}
		}
		return map[string]any{"brokers": m}
	}
	tunnel := func(broker string) map[string]any {
		return map[string]any{"handle": []any{map[string]any{"handler": "amqp_tunnel", "broker": broker, "queue": "q"}}}
	}
	for _, tc := range []struct {
		name   string
		apps   map[string]any
		listen string
		route  map[string]any
		want   string
	}{
		{"handler, unknown broker", map[string]any{"amqp_brokers": brokers("main", "backup")}, e2e.FreePort(t), tunnel("nosuch"),
			`no broker "nosuch" in the amqp_brokers app (have: backup, main)`},
		{"handler, no app", map[string]any{}, e2e.FreePort(t), tunnel("main"),
			`broker "main": no amqp_brokers app is configured`},
		{"listener, unknown broker", map[string]any{"amqp_brokers": brokers("main")}, "amqp/q@nosuch", tunnel("main"),
			`amqp listener "q@nosuch": no broker "nosuch" in the amqp_brokers app (have: main)`},
		{"listener, none named among two", map[string]any{"amqp_brokers": brokers("main", "backup")}, "amqp/q", tunnel("main"),
			`no broker named in the address and the amqp_brokers app has 2; name one as <queue>@<broker>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apps := map[string]any{"layer4": e2e.Layer4(tc.listen, tc.route)["apps"].(map[string]any)["layer4"]}
			for k, v := range tc.apps {
				apps[k] = v
			}
			cfg, _ := json.Marshal(map[string]any{"admin": map[string]any{"disabled": true}, "apps": apps})
			err := caddy.Load(cfg, true)
			_ = caddy.Stop()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loading: %v\nwant an error containing %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Fatalf("the error shows a broker's password: %v", err)
			}
		})
	}
}
