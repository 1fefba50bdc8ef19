package l4amqp_test

import (
	"net"
	"net/http"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// watchedBroker forwards to the real RabbitMQ and reports each connection
// the proxy makes to it: "open" when accepted, "closed" when the proxy's
// side has gone away.
func watchedBroker(t *testing.T) (string, <-chan string) {
	t.Helper()
	events := make(chan string, 16)
	addr := e2e.ServeTCP(t, func(c net.Conn) {
		events <- "open"
		e2e.Forward(c, e2e.RabbitAddr)
		events <- "closed"
	})
	return addr, events
}

func expectEvent(t *testing.T, events <-chan string, want string) {
	t.Helper()
	select {
	case got := <-events:
		if got != want {
			t.Fatalf("broker connection %s, want %s", got, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no broker connection %s within 5s", want)
	}
}

func expectNoEvent(t *testing.T, events <-chan string, wait time.Duration) {
	t.Helper()
	select {
	case got := <-events:
		t.Fatalf("broker connection %s before the client's Open", got)
	case <-time.After(wait):
	}
}

// TestEarlyDialAtClientHeader: with one default farm and no limits, the
// broker is dialed when the client's header is in, before its Start-Ok;
// a client that goes away then leaves no broker connection behind.
func TestEarlyDialAtClientHeader(t *testing.T) {
	broker, events := watchedBroker(t)
	_, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{broker}}})
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	if _, ok := readMethod(t, c).(*amqp.Start); !ok {
		t.Fatal("no Connection.Start")
	}
	expectEvent(t, events, "open")
	_ = c.Close()
	expectEvent(t, events, "closed")
}

// TestEarlyDialSessionsWork: sessions through an early dial carry
// messages, and a wrong password still gets the broker's 403.
func TestEarlyDialSessionsWork(t *testing.T) {
	broker, events := watchedBroker(t)
	_, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{broker}}})
	conn := dial(t, e2e.URL(addr, e2e.VhostA))
	expectEvent(t, events, "open")
	roundTrip(t, conn, 50)
	_ = conn.Close()
	expectEvent(t, events, "closed")
	refusal(t, "amqp://"+e2e.TestUser+":Wr0ng-pw-91b2@"+addr+"/"+e2e.VhostA, 403, "ACCESS_REFUSED", 5*time.Second)
	expectEvent(t, events, "open")
	expectEvent(t, events, "closed")
}

// TestNoEarlyDialWhenTheClientDecides: a route that depends on the vhost,
// or a connection limit, waits for the client's Open before dialing.
func TestNoEarlyDialWhenTheClientDecides(t *testing.T) {
	for name, h := range map[string]func(broker string) map[string]any{
		"vhost routes": func(broker string) map[string]any { return handler(vhosts([]string{broker}, e2e.VhostA)) },
		"max_connections": func(broker string) map[string]any {
			return map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{broker}},
				"limits": map[string]any{"max_connections": 5}}
		},
	} {
		t.Run(name, func(t *testing.T) {
			broker, events := watchedBroker(t)
			_, addr := startProxy(t, h(broker))
			c := rawClient(t, addr)
			_, _ = c.Write(amqp.Header091)
			readMethod(t, c) // Start
			send(t, c, plainStartOk())
			tune := readMethod(t, c).(*amqp.Tune)
			send(t, c, &amqp.TuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax, Heartbeat: 0})
			expectNoEvent(t, events, 300*time.Millisecond)
			send(t, c, &amqp.Open{VirtualHost: e2e.VhostA})
			if _, ok := readMethod(t, c).(*amqp.OpenOk); !ok {
				t.Fatal("no Open-Ok")
			}
			expectEvent(t, events, "open")
		})
	}
}

// TestEarlyDialDroppedWhilePaused: a client held by a paused vhost does not
// keep the broker connection dialed for it; at resume it is routed by a
// new dial and works.
func TestEarlyDialDroppedWhilePaused(t *testing.T) {
	broker, events := watchedBroker(t)
	c, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{broker}}})
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostA+"/pause", http.StatusOK)
	got := make(chan *amqp091.Connection, 1)
	go func() {
		conn, err := amqp091.Dial(e2e.URL(addr, e2e.VhostA))
		if err != nil {
			t.Errorf("held client: %v", err)
		}
		got <- conn
	}()
	expectEvent(t, events, "open")
	expectEvent(t, events, "closed") // dropped when the client was held
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostA+"/resume", http.StatusOK)
	expectEvent(t, events, "open")
	conn := <-got
	if conn == nil {
		t.FailNow()
	}
	defer conn.Close()
	roundTrip(t, conn, 10)
}

// TestEarlyDialFailsOver: an early dial passes over a member that refuses
// connections.
func TestEarlyDialFailsOver(t *testing.T) {
	dead := e2e.FreePort(t)
	c, addr := startProxy(t, map[string]any{"handler": "amqp",
		"default": map[string]any{"to": []string{dead, e2e.RabbitAddr}, "lb_policy": "first"}})
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostA)), 5)
	if got := c.MetricValue(t, `caddy_layer4_farm_member_failed{member="`+dead+`"}`); got != 1 {
		t.Errorf("the refusing member: member_failed %v, want 1", got)
	}
}

// TestEarlyDialAllMembersDead: with every member dead the client still gets
// Close 320 after its Open, naming its vhost.
func TestEarlyDialAllMembersDead(t *testing.T) {
	_, addr := startProxy(t, map[string]any{"handler": "amqp",
		"default": map[string]any{"to": []string{e2e.FreePort(t), e2e.FreePort(t)}}})
	refusal(t, e2e.URL(addr, e2e.VhostA), 320, "no broker reachable for vhost prelude-a", 2*time.Second)
}
