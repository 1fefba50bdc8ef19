package l4amqp_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestIssueCaddyfileAsWritten runs caddyfile/vhost-routing.caddytest, the
// Caddyfile that must work as written, with two changes only: its listener
// moves to a free port, and the DNS names get a loopback resolver (tests
// never use the system resolver). rabbit-a.internal is the real RabbitMQ;
// rabbit-b.internal points where nothing listens, so least_conn has to fail
// over; 127.0.0.2:5672 has no broker at all.
func TestIssueCaddyfileAsWritten(t *testing.T) {
	e2e.RequireRabbit(t)
	raw, err := os.ReadFile("../../caddyfile/vhost-routing.caddytest")
	if err != nil {
		t.Fatal(err)
	}
	cf, _, _ := strings.Cut(string(raw), "\n----------\n")
	dns := e2e.StartDNS(t)
	dns.Set("rabbit-a.internal", "127.0.0.1")
	dns.Set("rabbit-b.internal", "127.0.0.11")
	addr := e2e.FreePort(t)
	cf = strings.Replace(cf, "127.0.0.1:5673", addr, 1)
	cf = strings.Replace(cf, "dial_timeout 2s", "dial_timeout 2s\n\t\t\t\t\t\tresolver "+dns.Addr, 1)
	c := e2e.StartCaddyfile(t, cf+"\n")
	c.NoLeak(e2e.TestPassword)

	roundTrip(t, dial(t, e2e.URL(addr, "/")), 20)
	for i := 0; i < 3; i++ { // whichever member least_conn picks first, all land on rabbit-a
		roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostOrders)), 20)
	}
	// /billing is routed like /orders; RabbitMQ has no such vhost and says so.
	refusal(t, e2e.URL(addr, "/billing"), 530, "vhost /billing not found", 3*time.Second)
	refusal(t, e2e.URL(addr, "/team-blue"), 320, "no broker reachable for vhost /team-blue", 3*time.Second)
	refusal(t, e2e.URL(addr, "/elsewhere"), 530, "vhost /elsewhere is not routed", time.Second)
}
