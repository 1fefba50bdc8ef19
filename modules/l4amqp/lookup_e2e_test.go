package l4amqp_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestLookupFileRoutesVhosts: vhosts routed by a TSV file keyed by
// {l4.amqp.vhost}: each vhost reaches its own address, and a vhost the
// table does not hold gets Close 530 saying there is no route for it.
func TestLookupFileRoutesVhosts(t *testing.T) {
	watched, events := watchedBroker(t)
	routes := filepath.Join(t.TempDir(), "vhost-routes.tsv")
	table := e2e.VhostA + "\t" + e2e.RabbitAddr + "\n" + e2e.VhostB + "\t" + watched + "\n"
	if err := os.WriteFile(routes, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	_, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{
		"lookup": map[string]any{"source": "file", "path": routes, "key": "{l4.amqp.vhost}"}}})

	a := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, a, 10)
	expectNoEvent(t, events, 100*time.Millisecond) // vhost A went straight to RabbitMQ
	_ = a.Close()

	b := dial(t, e2e.URL(addr, e2e.VhostB))
	expectEvent(t, events, "open") // vhost B through the watched address
	roundTrip(t, b, 10)
	_ = b.Close()

	refusal(t, e2e.URL(addr, "nowhere"), 530, `NOT_ALLOWED - no route for vhost nowhere: no route for key "nowhere"`, 2*time.Second)
}

// TestPlaceholdersInTo: a broker address built per connection from
// placeholders; a value that would change the address's shape (the vhost
// "/" here) gets Close 530 and is never dialed.
func TestPlaceholdersInTo(t *testing.T) {
	host, port, _ := strings.Cut(e2e.RabbitAddr, ":")
	t.Setenv("PRELUDE_TEST_BROKER_HOST", host)
	_, addr := startProxy(t, map[string]any{"handler": "amqp", "routes": []any{
		map[string]any{"vhosts": []string{e2e.VhostA}, "to": []string{"{env.PRELUDE_TEST_BROKER_HOST}:" + port}},
		map[string]any{"vhosts": []string{"/"}, "to": []string{"{l4.amqp.vhost}.brokers.internal:" + port}},
	}})
	conn := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, conn, 10)
	_ = conn.Close()
	refusal(t, e2e.URL(addr, "/"), 530, `NOT_ALLOWED - no route for vhost /: no route for key "{l4.amqp.vhost}.brokers.internal:`+port+`": placeholder {l4.amqp.vhost} is "/", with '/'`, 2*time.Second)
}

// TestLookupByVhostLabel: {l4.amqp.vhost_label}, the vhost as a DNS label,
// keys a lookup (as it would name a broker host in a to address).
func TestLookupByVhostLabel(t *testing.T) {
	routes := filepath.Join(t.TempDir(), "labels.tsv")
	label := amqp.VhostLabel(e2e.VhostA)
	if err := os.WriteFile(routes, []byte(label+"\t"+e2e.RabbitAddr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, addr := startProxy(t, map[string]any{"handler": "amqp", "default": map[string]any{
		"lookup": map[string]any{"source": "file", "path": routes, "key": "{l4.amqp.vhost_label}"}}})
	conn := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, conn, 5)
	refusal(t, e2e.URL(addr, e2e.VhostB), 530, `no route for key "`+amqp.VhostLabel(e2e.VhostB)+`"`, 2*time.Second)
}
