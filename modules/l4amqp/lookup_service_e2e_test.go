package l4amqp_test

import (
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

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

// TestLookupRedisDrainMoved is amqpprox's "move a vhost to another farm"
// without a config push: a vhost's route changed in Redis sends new
// connections to the new place within a second, and with drain_moved the
// live session on the old route gets the graceful Close 320 saying why,
// while a session whose route did not change goes on.
func TestLookupRedisDrainMoved(t *testing.T) {
	watched, events := watchedBroker(t)
	rs := e2e.StartRedis(t)
	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, e2e.RabbitAddr)
	rs.MustDo("SET", "prelude:route:"+e2e.VhostB, e2e.RabbitAddr)
	_, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{"lookup": map[string]any{
		"source": "redis", "url": "redis://" + rs.Addr, "key": "{l4.amqp.vhost}", "ttl": int64(time.Hour), "drain_moved": true}}})
	a := dial(t, e2e.URL(addr, e2e.VhostA))
	b := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, a, 5)
	roundTrip(t, b, 5)
	closed := a.NotifyClose(make(chan *amqp091.Error, 1))

	moved := time.Now()
	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, watched)
	expectMovedClose(t, closed, e2e.VhostA, moved)
	roundTrip(t, b, 5) // vhost B did not move: its session goes on
	a2 := dial(t, e2e.URL(addr, e2e.VhostA))
	expectEvent(t, events, "open") // the reconnect reaches the new place
	roundTrip(t, a2, 5)
}

// TestDrainMovedAcrossReload: a session routed by a config that a reload
// replaced is still watched: its route changed in Redis after the reload
// ends it with Close 320.
func TestDrainMovedAcrossReload(t *testing.T) {
	watched, _ := watchedBroker(t)
	rs := e2e.StartRedis(t)
	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, e2e.RabbitAddr)
	h := map[string]any{"handler": "amqp", "default": map[string]any{"lookup": map[string]any{
		"source": "redis", "url": "redis://" + rs.Addr, "key": "{l4.amqp.vhost}", "ttl": int64(time.Hour), "drain_moved": true}}}
	c, addr := startProxy(t, h)
	a := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, a, 5)
	closed := a.NotifyClose(make(chan *amqp091.Error, 1))
	c.Reload(t, e2e.Layer4(addr, route(h)))
	roundTrip(t, a, 5) // the session outlived the reload
	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, watched)
	select {
	case err := <-closed:
		if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "moved") {
			t.Fatalf("ended with %v, want Close 320 saying the route moved", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the session from before the reload was not ended when its route moved")
	}
}

// TestLookupRedisMovesVhostBetweenFarms is amqpprox's "move a vhost to
// another farm" word for word: Redis maps each vhost to a farm of the
// config ("farm:blue"), and setting it to "farm:green" sends new
// connections to green and, with drain_moved, ends the live session on
// blue with Close 320, while a vhost still on blue goes on.
func TestLookupRedisMovesVhostBetweenFarms(t *testing.T) {
	watched, events := watchedBroker(t)
	rs := e2e.StartRedis(t)
	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, "farm:blue")
	rs.MustDo("SET", "prelude:route:"+e2e.VhostB, "farm:blue")
	c, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{
		"lookup": map[string]any{"source": "redis", "url": "redis://" + rs.Addr, "key": "{l4.amqp.vhost}",
			"ttl": int64(time.Hour), "drain_moved": true},
		"farms": map[string]any{
			"blue":  map[string]any{"to": []string{e2e.RabbitAddr}},
			"green": map[string]any{"to": []string{watched}},
		}}})
	a := dial(t, e2e.URL(addr, e2e.VhostA))
	b := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, a, 5)
	roundTrip(t, b, 5)
	expectNoEvent(t, events, 100*time.Millisecond) // both on blue
	closed := a.NotifyClose(make(chan *amqp091.Error, 1))

	moved := time.Now()
	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, "farm:green")
	expectMovedClose(t, closed, e2e.VhostA, moved)
	roundTrip(t, b, 5) // vhost B stayed on blue: its session goes on
	a2 := dial(t, e2e.URL(addr, e2e.VhostA))
	expectEvent(t, events, "open") // the reconnect reaches green
	roundTrip(t, a2, 5)

	rs.MustDo("SET", "prelude:route:"+e2e.VhostA, "farm:purple")
	// The change reaches the cache by a keyspace notification: wait for it.
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, body := c.Get(t, "/prelude/lookups/amqp%20default?key="+e2e.VhostA); strings.Contains(body, `"farm":"purple"`) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("the route to farm purple not in use within 1s: %s", body)
		}
	}
	refusal(t, e2e.URL(addr, e2e.VhostA), 530, `no route for key "`+e2e.VhostA+`"`, 2*time.Second)
}

// expectMovedClose waits for the Close 320 that drain_moved sends a
// session of vhost whose route moved at moved, within a second of it.
func expectMovedClose(t *testing.T, closed <-chan *amqp091.Error, vhost string, moved time.Time) {
	t.Helper()
	select {
	case err := <-closed:
		if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "the route for "+vhost+" moved") {
			t.Fatalf("the moved vhost's session ended with %v, want Close 320 saying its route moved", err)
		}
		if took := time.Since(moved); took > time.Second {
			t.Fatalf("the moved session was ended %v after the change, want within 1s", took)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the moved vhost's session was not ended")
	}
}
