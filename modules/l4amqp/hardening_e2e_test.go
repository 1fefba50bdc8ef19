package l4amqp_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestStatsIgnoreMadeUpVHosts: vhost names clients make up, on refused
// logins, never get counters of their own: they count in one bucket.
func TestStatsIgnoreMadeUpVHosts(t *testing.T) {
	h := handler()
	h["default"] = map[string]any{"to": []string{e2e.RabbitAddr}}
	c, addr := startProxy(t, h)
	before := vhostCounters(amqpStats(t, c), "(not routed)")
	var junk []string
	for i := range 3 {
		name := fmt.Sprintf("junk-%d-%d", i, time.Now().UnixNano())
		junk = append(junk, name)
		url := strings.Replace(e2e.URL(addr, name), e2e.TestPassword, "Wr0ng-pw-91b2", 1)
		if conn, err := amqp091.Dial(url); err == nil {
			_ = conn.Close()
			t.Fatal("a wrong password was accepted")
		}
	}
	waitFor(t, "the refusals counted", func() bool {
		return vhostCounters(amqpStats(t, c), "(not routed)").Refused["auth"]-before.Refused["auth"] == 3
	})
	st := amqpStats(t, c)
	for _, name := range junk {
		if _, ok := st.VHosts[name]; ok {
			t.Fatalf("the made-up vhost %q has counters: %v", name, st.VHosts[name])
		}
	}
	// A vhost a broker accepted is counted under its name.
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 1)
	waitFor(t, "the routed vhost counted", func() bool { return vhostCounters(amqpStats(t, c), e2e.VhostB).Accepted > 0 })
}

// TestPauseNamesItsRoutes: the docs' example pauses "/orders" as %2Forders;
// "orders", which no route serves, is refused with a 404 naming the routes
// and the vhost meant, not silently paused.
func TestPauseNamesItsRoutes(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostOrders)))
	body := mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/orders/pause", http.StatusNotFound)
	if !strings.Contains(body, `no route serves vhost \"orders\"`) || !strings.Contains(body, "%2Forders") || !strings.Contains(body, `\"/orders\"`) {
		t.Fatalf("pause of an unrouted name: %s", body)
	}
	body = mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/%2Forders/pause", http.StatusOK)
	defer mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/%2Forders/resume", http.StatusOK)
	var out struct {
		Routes []string `json:"routes"`
	}
	mustOK(t, json.Unmarshal([]byte(body), &out))
	if len(out.Routes) != 1 || out.Routes[0] != e2e.VhostOrders {
		t.Fatalf("pause of /orders: %s", body)
	}
	// An /orders client is held, and listed as such.
	conn := rawClient(t, addr)
	_, _ = conn.Write(amqp.Header091)
	readMethod(t, conn)
	send(t, conn, plainStartOk())
	tune := readMethod(t, conn).(*amqp.Tune)
	send(t, conn, &amqp.TuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax})
	send(t, conn, &amqp.Open{VirtualHost: e2e.VhostOrders})
	waitFor(t, "the client listed as held", func() bool {
		_, body := c.Get(t, "/prelude/amqp/vhosts")
		return strings.Contains(body, `"held":{"/orders":1}`)
	})
	before := vhostCounters(amqpStats(t, c), e2e.VhostOrders)
	_ = conn.Close() // gives up, as a library's own timeout would
	waitFor(t, "the client that gave up counted under its vhost", func() bool {
		return vhostCounters(amqpStats(t, c), e2e.VhostOrders).PauseGaveUp-before.PauseGaveUp == 1
	})
}

// TestPauseWarnsOnADefaultOnlyName: with a default farm, "orders" is
// served (by the default), but "/orders" has a block of its own: the pause
// goes through with a warning naming it.
func TestPauseWarnsOnADefaultOnlyName(t *testing.T) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostOrders))
	h["default"] = map[string]any{"to": []string{e2e.RabbitAddr}}
	c, _ := startProxy(t, h)
	body := mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/orders/pause", http.StatusOK)
	defer mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/orders/resume", http.StatusOK)
	if !strings.Contains(body, `"warning"`) || !strings.Contains(body, "%2Forders") {
		t.Fatalf("pause of a default-only name: %s", body)
	}
}

// TestRoutedCountedWhenRouted: connections_total{outcome="routed"} and the
// upstream's accepted count a session when it is routed, not when it ends.
func TestRoutedCountedWhenRouted(t *testing.T) {
	member := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(vhosts([]string{member.Addr}, e2e.VhostB)))
	series := `caddy_layer4_amqp_connections_total{outcome="routed",route="` + e2e.VhostB + `"}`
	metric := func() float64 {
		if !strings.Contains(c.Metrics(t), series) {
			return 0
		}
		return c.MetricValue(t, series)
	}
	before := metric()
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	if got := metric() - before; got != 1 {
		t.Fatalf("routed while the session lives: +%v, want +1", got)
	}
	if up := amqpStats(t, c).Upstreams[member.Addr]; up == nil || up.Accepted != 1 || up.Active != 1 {
		t.Fatalf("upstream counters while the session lives: %+v", up)
	}
	_ = conn.Close()
	waitFor(t, "the session to end", func() bool { return len(sessions(t, c, "")) == 0 })
	if got := metric() - before; got != 1 {
		t.Fatalf("routed after the session: +%v, want +1 (counted once)", got)
	}
}

// TestStartLogs: at start the listeners and the handler's routes are
// logged, and a farm whose members all fail their first health check says
// so at warn level.
func TestStartLogs(t *testing.T) {
	dead := e2e.FreePort(t)
	v := vhosts([]string{dead}, e2e.VhostA)
	v["health_interval"] = "100ms"
	pooledRoute := vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)
	pooledRoute["pool"] = map[string]any{}
	c, addr := startProxy(t, handler(v, pooledRoute))
	waitFor(t, "the listener line", func() bool {
		return strings.Contains(c.Logs(), `"msg":"layer4 listener"`) && strings.Contains(c.Logs(), `"listen":["`+addr+`"]`)
	})
	waitFor(t, "the no-member warning", func() bool {
		return strings.Contains(c.Logs(), `"msg":"farm_no_member_healthy"`) && strings.Contains(c.Logs(), dead)
	})
	logs := c.Logs()
	if !strings.Contains(logs, `"msg":"amqp routes"`) || !strings.Contains(logs, e2e.VhostA+" -> "+dead) ||
		!strings.Contains(logs, e2e.VhostB+" -> "+e2e.RabbitAddr+" (pooled)") {
		t.Fatalf("no start-up line with the routes in the log")
	}
}
