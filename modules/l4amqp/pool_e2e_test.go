package l4amqp_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// pooled is a vhost block that pools its connections to relay (which
// counts the broker connections the proxy opens).
func pooled(relay *e2e.Relay, vhost string, pool map[string]any) map[string]any {
	v := vhosts([]string{relay.Addr}, vhost)
	v["pool"] = pool
	return v
}

// pools returns the pools to upstream (pools outlive configs: other
// tests' pools may still be there).
func pools(t *testing.T, c *e2e.Caddy, upstream string) []l4amqp.PoolStatus {
	t.Helper()
	code, body := c.Get(t, "/prelude/amqp/pools")
	if code != 200 {
		t.Fatalf("GET /prelude/amqp/pools: %d %s", code, body)
	}
	var all, out []l4amqp.PoolStatus
	if err := json.Unmarshal([]byte(body), &all); err != nil {
		t.Fatalf("pools: %v in %s", err, body)
	}
	for _, p := range all {
		if p.Upstream == upstream {
			out = append(out, p)
		}
	}
	return out
}

// TestPoolSharesConnections is the interface as written: 30
// clients at once, each publishing with confirms and consuming its own
// messages, over at most 2 broker connections.
func TestPoolSharesConnections(t *testing.T) {
	e2e.RequireRabbit(t)
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{"max_channels_per_connection": 500})))
	const clients = 30
	conns := make([]*amqp091.Connection, clients)
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := amqp091.DialConfig(e2e.URL(addr, e2e.VhostB), amqp091.Config{
				Properties: amqp091.Table{"connection_name": fmt.Sprintf("pooled-%d", i)}})
			if err != nil {
				errs <- err
				return
			}
			conns[i] = conn
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dial: %v", err)
	}
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			roundTrip(t, conns[i], 20)
		}()
	}
	wg.Wait()
	if n := broker.Conns.Load(); n > 2 {
		t.Fatalf("%d clients opened %d broker connections, want at most 2", clients, n)
	}
	ss := sessions(t, c, "")
	if len(ss) != clients {
		t.Fatalf("%d sessions listed, want %d", len(ss), clients)
	}
	names := map[string]bool{}
	for _, s := range ss {
		names[s.ConnectionName] = true
		if s.Relay != "pool" || s.Pool == "" || s.Upstream != broker.Addr || !strings.HasPrefix(s.Client, "127.0.0.1:") {
			t.Fatalf("session %+v: want relay pool, a pool connection name, the real client", s)
		}
	}
	if !names["pooled-0"] || !names[fmt.Sprintf("pooled-%d", clients-1)] {
		t.Fatalf("sessions lack the clients' connection names: %v", names)
	}
	ps := pools(t, c, broker.Addr)
	if len(ps) != 1 || ps[0].Clients != clients || len(ps[0].Connections) != int(broker.Conns.Load()) ||
		ps[0].HandshakesSaved < clients-2 {
		t.Fatalf("pools: %+v", ps)
	}
	for _, conn := range conns {
		_ = conn.Close()
	}
	waitFor(t, "clients leave the pool", func() bool {
		ps := pools(t, c, broker.Addr)
		return len(ps) == 1 && ps[0].Clients == 0 && ps[0].ChannelsInUse == 0
	})
	// The broker connection outlives its clients (idle_timeout), and the
	// next client takes it without a handshake.
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 3)
	if n := broker.Conns.Load(); n > 2 {
		t.Fatalf("a client after the others opened a broker connection (%d)", n)
	}
	c.WaitMetric(t, `caddy_layer4_amqp_pool_clients{route="`+e2e.VhostB+`",upstream="`+broker.Addr+`"} 1`)
}

// TestPoolWrongPasswordGets403: a client whose credentials differ from
// those of the open pooled connection is checked by the broker itself, on
// a connection of its own, and gets the broker's 403 during its handshake.
func TestPoolWrongPasswordGets403(t *testing.T) {
	e2e.RequireRabbit(t)
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	good := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, good, 2)
	bad := strings.Replace(e2e.URL(addr, e2e.VhostB), e2e.TestPassword, "Wr0ng-pw-91b2", 1)
	refusal(t, bad, 403, "ACCESS_REFUSED", 5*time.Second)
	roundTrip(t, good, 2)
	ps := pools(t, c, broker.Addr)
	if len(ps) != 1 || len(ps[0].Connections) != 1 {
		t.Fatalf("pools after a refused client: %+v", ps)
	}
}

// TestPoolUnknownVhostGetsBrokers530: the broker checks the vhost of a new
// pooled connection before the client is told it is in.
func TestPoolUnknownVhostGetsBrokers530(t *testing.T) {
	e2e.RequireRabbit(t)
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, "prelude-nowhere", map[string]any{})))
	refusal(t, e2e.URL(addr, "prelude-nowhere"), 530, "prelude-nowhere", 5*time.Second)
}

// TestPoolIsolatesABadClient: one client sending a frame that would make
// the broker close the whole connection (garbage, a wrong channel, a huge
// frame size, half a message then a disconnect) is closed by the proxy
// alone, with a Close that says why; 50 clients sharing its broker
// connection finish their publishes with every confirm.
func TestPoolIsolatesABadClient(t *testing.T) {
	e2e.RequireRabbit(t)
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	bad := []struct {
		name  string
		after func(w *rawAMQP) // after a channel is open on 1
		code  uint16
		text  string
	}{
		{"garbage", func(w *rawAMQP) { w.write([]byte("GET / HTTP/1.1\r\n\r\n")) }, 501, "FRAME_ERROR"},
		{"wrong channel", func(w *rawAMQP) { w.method(7, 60, 40, publishArgs("q")) }, 504, "channel 7"},
		{"2 GB frame", func(w *rawAMQP) { w.write([]byte{1, 0, 1, 0x7f, 0xff, 0xff, 0xff}) }, 501, "FRAME_ERROR"},
		{"method inside a message", func(w *rawAMQP) {
			w.method(1, 60, 40, publishArgs("q"))
			w.header(1, 10)
			w.method(1, 60, 40, publishArgs("q"))
		}, 505, "UNEXPECTED_FRAME"},
		{"half a message then a disconnect", func(w *rawAMQP) {
			w.method(1, 60, 40, publishArgs("q"))
			w.header(1, 10)
			w.body(1, "01234")
		}, 0, ""},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			const good = 50
			q := declareQueue(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
			conns := make([]*amqp091.Connection, good)
			for i := range conns {
				conns[i] = dial(t, e2e.URL(addr, e2e.VhostB))
			}
			var wg sync.WaitGroup
			start := make(chan struct{})
			errs := make(chan error, good)
			for _, conn := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					errs <- publishConfirmed(conn, q, 50)
				}()
			}
			w := dialRaw(t, addr, e2e.VhostB)
			w.method(1, 20, 10, []byte{0})
			w.expectMethod(1, 20, 11)
			close(start)
			b.after(w)
			if b.code != 0 {
				cl := w.expectClose()
				if cl.ReplyCode != b.code || !strings.Contains(cl.ReplyText, b.text) {
					t.Fatalf("bad client got Close %d %q, want %d %s", cl.ReplyCode, cl.ReplyText, b.code, b.text)
				}
			}
			w.conn.Close()
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("a good client: %v", err)
				}
			}
			if n := messageCount(t, q); n != good*50 {
				t.Fatalf("queue holds %d messages, want %d (the good clients' only)", n, good*50)
			}
			for _, conn := range conns {
				if conn.IsClosed() {
					t.Fatal("a good client's connection closed")
				}
				_ = conn.Close()
			}
		})
	}
}

// publishConfirmed publishes n 16-byte messages to queue q with confirms.
func publishConfirmed(conn *amqp091.Connection, q string, n int) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	for i := range n {
		dc, err := ch.PublishWithDeferredConfirm("", q, false, false, amqp091.Publishing{Body: []byte(fmt.Sprintf("%016d", i))})
		if err != nil {
			return err
		}
		if !dc.Wait() {
			return errors.New("nacked")
		}
	}
	return nil
}

// declareQueue declares a fresh queue directly on the broker, deleted at
// the end of the test.
func declareQueue(t *testing.T, url string) string {
	t.Helper()
	conn := dial(t, url)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	q, err := ch.QueueDeclare(fmt.Sprintf("prelude-pool-%d", time.Now().UnixNano()), false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = ch.QueueDelete(q.Name, false, false, false) })
	return q.Name
}

func messageCount(t *testing.T, q string) int {
	t.Helper()
	conn := dial(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	st, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	return st.Messages
}
