package l4amqp_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestLookupServicesRouteVhosts: vhosts routed by an HTTP routing service
// and by Redis, keyed by {l4.amqp.vhost}: each vhost reaches its own
// address, an answer that refuses gets Close 403 with the service's
// reason, and a vhost the service does not hold gets Close 530.
func TestLookupServicesRouteVhosts(t *testing.T) {
	watched, events := watchedBroker(t)
	routes := map[string]string{
		e2e.VhostA:  e2e.RabbitAddr,
		e2e.VhostB:  `{"to": ["` + watched + `"]}`,
		"suspended": `{"refuse": "tenant suspended, see billing"}`,
	}
	ln, err := net.Listen("tcp", e2e.FreePort(t))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, ok := routes[strings.TrimPrefix(r.URL.Path, "/vhost/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(v))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { _ = srv.Close() })
	rs := e2e.StartRedis(t)
	for k, v := range routes {
		rs.MustDo("HSET", "vhost-routes", k, v)
	}
	for _, source := range []map[string]any{
		{"source": "http", "url": "http://" + ln.Addr().String() + "/vhost/{key}", "key": "{l4.amqp.vhost}"},
		{"source": "redis", "url": "redis://" + rs.Addr, "hash": "vhost-routes", "key": "{l4.amqp.vhost}"},
	} {
		t.Run(source["source"].(string), func(t *testing.T) {
			_, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{"lookup": source}})
			a := dial(t, e2e.URL(addr, e2e.VhostA))
			roundTrip(t, a, 10)
			expectNoEvent(t, events, 100*time.Millisecond) // vhost A went straight to RabbitMQ
			_ = a.Close()

			b := dial(t, e2e.URL(addr, e2e.VhostB))
			expectEvent(t, events, "open") // vhost B through the watched address
			roundTrip(t, b, 10)
			_ = b.Close()
			expectEvent(t, events, "closed")

			refusal(t, e2e.URL(addr, "suspended"), 403, "ACCESS_REFUSED - vhost suspended: tenant suspended, see billing", 2*time.Second)
			refusal(t, e2e.URL(addr, "nowhere"), 530, `NOT_ALLOWED - no route for vhost nowhere: no route for key "nowhere"`, 2*time.Second)
		})
	}
}
