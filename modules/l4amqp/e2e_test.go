package l4amqp_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// route is a layer4 route: the amqp matcher in front of an amqp handler.
func route(handler map[string]any) map[string]any {
	return map[string]any{
		"match":  []any{map[string]any{"amqp": map[string]any{}}},
		"handle": []any{handler},
	}
}

func handler(routes ...map[string]any) map[string]any {
	return map[string]any{"handler": "amqp", "routes": routes}
}

func vhosts(to []string, patterns ...string) map[string]any {
	return map[string]any{"vhosts": patterns, "to": to}
}

// startProxy starts Caddy with the given amqp handler on a free port.
func startProxy(t *testing.T, h map[string]any) (*e2e.Caddy, string) {
	t.Helper()
	e2e.RequireRabbit(t)
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, e2e.Layer4(addr, route(h)))
	c.NoLeak(e2e.TestPassword, "Wr0ng-pw-91b2")
	return c, addr
}

// roundTrip publishes n messages with publisher confirms and consumes them
// back on a fresh queue, failing unless every message arrives intact.
func roundTrip(t *testing.T, conn *amqp091.Connection, n int) {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		t.Fatalf("confirm.select: %v", err)
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		t.Fatalf("queue.declare: %v", err)
	}
	deliveries, err := ch.Consume(q.Name, "", false, true, false, false, nil)
	if err != nil {
		t.Fatalf("basic.consume: %v", err)
	}
	for i := 0; i < n; i++ {
		body := []byte(fmt.Sprintf("message %d %s", i, strings.Repeat("x", i%5000)))
		dc, err := ch.PublishWithDeferredConfirm("", q.Name, false, false, amqp091.Publishing{Body: body})
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if !dc.Wait() {
			t.Fatalf("publish %d nacked", i)
		}
	}
	for i := 0; i < n; i++ {
		select {
		case d := <-deliveries:
			want := fmt.Sprintf("message %d %s", i, strings.Repeat("x", i%5000))
			if string(d.Body) != want {
				t.Fatalf("delivery %d: got %d bytes, want %d", i, len(d.Body), len(want))
			}
			_ = d.Ack(false)
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of %d messages came back", i, n)
		}
	}
}

func dial(t *testing.T, url string) *amqp091.Connection {
	t.Helper()
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("dial %s: %v", redact(url), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func redact(url string) string { return strings.ReplaceAll(url, e2e.TestPassword, "xxx") }

// refusal dials and expects a Connection.Close with code, whose text
// contains text, within limit.
func refusal(t *testing.T, url string, code int, text string, limit time.Duration) {
	t.Helper()
	start := time.Now()
	c, err := amqp091.DialConfig(url, amqp091.Config{Dial: amqp091.DefaultDial(limit + 5*time.Second)})
	took := time.Since(start)
	if err == nil {
		_ = c.Close()
		t.Fatalf("dial %s succeeded, want Close %d", redact(url), code)
	}
	var ae *amqp091.Error
	if !errors.As(err, &ae) {
		t.Fatalf("dial %s: %v (%T), want a Connection.Close %d", redact(url), err, err, code)
	}
	if ae.Code != code || !strings.Contains(ae.Reason, text) {
		t.Fatalf("Close %d %q, want %d containing %q", ae.Code, ae.Reason, code, text)
	}
	if took > limit {
		t.Fatalf("Close %d came after %v, want within %v", code, took, limit)
	}
}

func TestTwoVhostsTwoFarms(t *testing.T) {
	e2e.RequireRabbit(t)
	farmB := e2e.StartRelay(t, "127.0.0.2:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(
		vhosts([]string{e2e.RabbitAddr}, e2e.VhostA),
		vhosts([]string{farmB.Addr}, e2e.VhostB),
	))
	a := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, a, 200)
	if n := farmB.Conns.Load(); n != 0 {
		t.Fatalf("vhost %s reached farm B (%d connections)", e2e.VhostA, n)
	}
	b := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, b, 200)
	if n := farmB.Conns.Load(); n != 1 {
		t.Fatalf("farm B saw %d connections, want 1", n)
	}
}

func TestGlobAndDefault(t *testing.T) {
	e2e.RequireRabbit(t)
	glob := e2e.StartRelay(t, "127.0.0.3:0", e2e.RabbitAddr)
	h := handler(vhosts([]string{glob.Addr}, "prelude-*"))
	h["default"] = map[string]any{"to": []string{e2e.RabbitAddr}}
	_, addr := startProxy(t, h)
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 5)
	roundTrip(t, dial(t, e2e.URL(addr, "/")), 5)
	if n := glob.Conns.Load(); n != 1 {
		t.Fatalf("glob farm saw %d connections, want 1 (only %s)", n, e2e.VhostB)
	}
}

func TestUnknownVhostGets530(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostA)))
	const unrouted = `caddy_layer4_amqp_connections_total{outcome="unrouted",route="unrouted"}`
	const routed = `caddy_layer4_amqp_connections_total{outcome="routed",route="prelude-a"}`
	before, beforeRouted := c.MetricValue(t, unrouted), c.MetricValue(t, routed)
	refusal(t, e2e.URL(addr, "no-such-vhost"), 530, "vhost no-such-vhost is not routed", time.Second)
	conn := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, conn, 1)
	_ = conn.Close()
	if got := c.MetricValue(t, unrouted) - before; got != 1 {
		t.Errorf("%s rose by %v, want 1", unrouted, got)
	}
	// A routed session is counted when it ends.
	for deadline := time.Now().Add(5 * time.Second); c.MetricValue(t, routed)-beforeRouted != 1; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not rise by 1", routed)
		}
	}
}

func TestBrokerWithoutVhostGivesBrokers530(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "missing-*")))
	// RabbitMQ's own text, as a direct client would see it.
	refusal(t, e2e.URL(addr, "missing-on-broker"), 530, "vhost missing-on-broker not found", 2*time.Second)
}

func TestWrongPasswordGets403(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostA)))
	url := "amqp://" + e2e.TestUser + ":Wr0ng-pw-91b2@" + addr + "/" + e2e.VhostA
	refusal(t, url, 403, "ACCESS_REFUSED", 3*time.Second)
	// AMQPLAIN too.
	c, err := amqp091.DialConfig("amqp://"+addr+"/"+e2e.VhostA, amqp091.Config{
		SASL: []amqp091.Authentication{&amqp091.AMQPlainAuth{Username: e2e.TestUser, Password: "Wr0ng-pw-91b2"}}})
	var ae *amqp091.Error
	if err == nil || !errors.As(err, &ae) || ae.Code != 403 {
		if c != nil {
			_ = c.Close()
		}
		t.Fatalf("AMQPLAIN with a wrong password: %v, want Close 403", err)
	}
}

func TestAMQPLAIN(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostA)))
	c, err := amqp091.DialConfig("amqp://"+addr+"/"+e2e.VhostA, amqp091.Config{
		SASL: []amqp091.Authentication{&amqp091.AMQPlainAuth{Username: e2e.TestUser, Password: e2e.TestPassword}}})
	if err != nil {
		t.Fatalf("AMQPLAIN: %v", err)
	}
	defer c.Close()
	roundTrip(t, c, 3)
}

// TestDeadMemberIsSkipped: a member that refuses connections is passed
// over for the next one, and sits out fail_duration, as
// caddy_layer4_farm_member_failed shows.
func TestDeadMemberIsSkipped(t *testing.T) {
	dead := e2e.FreePort(t)
	h := handler(map[string]any{"vhosts": []string{"*"}, "to": []string{dead, e2e.RabbitAddr}, "lb_policy": "first"})
	c, addr := startProxy(t, h)
	for i := 0; i < 3; i++ {
		roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostA)), 2)
	}
	if got := c.MetricValue(t, `caddy_layer4_farm_member_failed{member="`+dead+`"}`); got != 1 {
		t.Errorf("the refusing member: member_failed %v, want 1", got)
	}
	if got := c.MetricValue(t, `caddy_layer4_farm_member_failed{member="`+e2e.RabbitAddr+`"}`); got != 0 {
		t.Errorf("the broker: member_failed %v, want 0", got)
	}
}

func TestAllMembersDeadGetsClose(t *testing.T) {
	h := handler(map[string]any{"vhosts": []string{"*"}, "to": []string{e2e.FreePort(t), e2e.FreePort(t)}})
	_, addr := startProxy(t, h)
	refusal(t, e2e.URL(addr, e2e.VhostA), 320, "no broker reachable for vhost prelude-a", 2*time.Second)
}

func TestLeastConnCountsLiveSessions(t *testing.T) {
	e2e.RequireRabbit(t)
	a := e2e.StartRelay(t, "127.0.0.4:0", e2e.RabbitAddr)
	b := e2e.StartRelay(t, "127.0.0.5:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(map[string]any{
		"vhosts": []string{"*"}, "to": []string{a.Addr, b.Addr}, "lb_policy": "least_conn"}))
	url := e2e.URL(addr, e2e.VhostA)
	c1 := dial(t, url)
	c2 := dial(t, url)
	if a.Conns.Load() != 1 || b.Conns.Load() != 1 {
		t.Fatalf("two sessions: a=%d b=%d, want one each", a.Conns.Load(), b.Conns.Load())
	}
	// Close the session on b; least_conn must send the next one to b, where
	// round robin would send it to a.
	onB := c2
	if err := onB.Close(); err != nil {
		t.Fatal(err)
	}
	c.WaitMetric(t, fmt.Sprintf(`caddy_layer4_farm_member_connections{member=%q} 0`, b.Addr))
	c.WaitMetric(t, fmt.Sprintf(`caddy_layer4_farm_member_connections{member=%q} 1`, a.Addr))
	c3 := dial(t, url)
	if b.Conns.Load() != 2 {
		t.Fatalf("third session went to a (a=%d b=%d), want b", a.Conns.Load(), b.Conns.Load())
	}
	roundTrip(t, c1, 2)
	roundTrip(t, c3, 2)
}

func TestDNSNamedMembers(t *testing.T) {
	e2e.RequireRabbit(t)
	dns := e2e.StartDNS(t)
	r1 := e2e.StartRelay(t, "127.0.0.6:0", e2e.RabbitAddr)
	_, port, _ := net.SplitHostPort(r1.Addr)
	r2 := e2e.StartRelay(t, "127.0.0.7:"+port, e2e.RabbitAddr)
	dns.Set("brokers.prelude.test", "127.0.0.6", "127.0.0.7")
	_, addr := startProxy(t, handler(map[string]any{
		"vhosts": []string{"*"}, "to": []string{"brokers.prelude.test:" + port},
		"resolver": dns.Addr, "dns_refresh": "1s"}))
	url := e2e.URL(addr, e2e.VhostA)
	for i := 0; i < 4; i++ {
		roundTrip(t, dial(t, url), 1)
	}
	if r1.Conns.Load() != 2 || r2.Conns.Load() != 2 {
		t.Fatalf("round robin over two A records: %d and %d, want 2 and 2", r1.Conns.Load(), r2.Conns.Load())
	}
	// Re-resolution: drop one address; after dns_refresh only the other is
	// used. Two intervals: a refresh already asking when the answer changed
	// may still have got the old one.
	dns.Set("brokers.prelude.test", "127.0.0.7")
	time.Sleep(2100 * time.Millisecond)
	for i := 0; i < 3; i++ {
		roundTrip(t, dial(t, url), 1)
	}
	if r1.Conns.Load() != 2 || r2.Conns.Load() != 5 {
		t.Fatalf("after re-resolution: %d and %d, want 2 and 5", r1.Conns.Load(), r2.Conns.Load())
	}
}

func TestReloadKeepsSessions(t *testing.T) {
	e2e.RequireRabbit(t)
	relay := e2e.StartRelay(t, "127.0.0.8:0", e2e.RabbitAddr)
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, e2e.Layer4(addr, route(handler(vhosts([]string{e2e.RabbitAddr}, "*")))))
	c.NoLeak(e2e.TestPassword)
	old := dial(t, e2e.URL(addr, e2e.VhostA))
	roundTrip(t, old, 10)
	c.Reload(t, e2e.Layer4(addr, route(handler(vhosts([]string{relay.Addr}, "*")))))
	roundTrip(t, old, 10) // the session from before the reload still works
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostA)), 1)
	if relay.Conns.Load() != 1 {
		t.Fatalf("new config not in effect: relay saw %d connections", relay.Conns.Load())
	}
}

func TestBrokerSeesRealClient(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	local, err := net.ResolveTCPAddr("tcp", "127.0.0.9:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := amqp091.Config{
		Vhost:      e2e.VhostB,
		Properties: amqp091.Table{"connection_name": "prelude-e2e-real-client"},
		Dial: func(network, a string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local}
			return d.Dial(network, a)
		},
	}
	conn, err := amqp091.DialConfig(e2e.URL(addr, e2e.VhostB), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	clientAddr := conn.LocalAddr().String()
	out, err := e2e.Rabbitmqctl("list_connections", "-p", e2e.VhostB, "client_properties")
	if err != nil {
		t.Fatalf("rabbitmqctl: %v: %s", err, out)
	}
	var line string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "prelude-e2e-real-client") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("the broker lists no connection named prelude-e2e-real-client:\n%s", out)
	}
	for _, want := range []string{`{"client_address","` + clientAddr + `"}`, `{"proxy","Caddy Prelude `} {
		if !strings.Contains(line, want) {
			t.Errorf("broker's client_properties lack %s:\n%s", want, line)
		}
	}
}

func TestBrokerStricterThanNegotiatedGetsClose(t *testing.T) {
	l4amqp.ForgetLearnedLimits()
	t.Cleanup(l4amqp.ForgetLearnedLimits)
	broker := startStrictBroker(t, 8192)
	_, addr := startProxy(t, handler(vhosts([]string{broker}, "*")))
	url := e2e.URL(addr, e2e.VhostA)
	// The client accepts the proxy's 131072, then the broker turns out to
	// allow 8192: the client is told, not left with a broken session.
	refusal(t, url, 320, "allows frame_max 8192, below the 131072", 2*time.Second)
	// The next client is offered the broker's limit and gets through.
	c, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("second client: %v", err)
	}
	defer c.Close()
	if c.Config.FrameSize != 8192 {
		t.Fatalf("second client negotiated frame_max %d, want 8192", c.Config.FrameSize)
	}
}

// TestMetricsFollowASession: the layer4_amqp series of a route move with
// one real session — sessions_active while it lives, one handshake
// observed, and relayed bytes each way equal to what GET
// /prelude/amqp/stats counted for the vhost.
func TestMetricsFollowASession(t *testing.T) {
	// A pattern no other test routes by, so that the route's series are
	// this test's alone ("prelude-[b]" matches only prelude-b).
	const pattern = "prelude-[b]"
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, pattern)))
	const route = `route="` + pattern + `"`
	series := map[string]string{
		"active": `caddy_layer4_amqp_sessions_active{` + route + `}`,
		"hs":     `caddy_layer4_amqp_handshake_seconds_count{` + route + `}`,
		"up":     `caddy_layer4_amqp_relayed_bytes_total{direction="upstream",` + route + `}`,
		"down":   `caddy_layer4_amqp_relayed_bytes_total{direction="downstream",` + route + `}`,
	}
	before := map[string]float64{}
	for k, s := range series { // the counters outlive a test's Caddy
		before[k] = c.MetricValue(t, s)
	}
	statsBefore := vhostCounters(amqpStats(t, c), e2e.VhostB)
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	if got := c.MetricValue(t, series["active"]); got != before["active"]+1 {
		t.Fatalf("%s = %v while the session lives, want %v", series["active"], got, before["active"]+1)
	}
	roundTrip(t, conn, 20)
	_ = conn.Close()
	// The stats are recorded after the metrics: once they show the
	// session's bytes, so do the metrics.
	var after l4amqp.Counters
	waitFor(t, "the session to be counted", func() bool {
		after = vhostCounters(amqpStats(t, c), e2e.VhostB)
		return after.BytesIn > statsBefore.BytesIn
	})
	if got := c.MetricValue(t, series["active"]); got != before["active"] {
		t.Errorf("%s = %v after the session, want %v", series["active"], got, before["active"])
	}
	for k, want := range map[string]float64{
		"hs":   1,
		"up":   float64(after.BytesIn - statsBefore.BytesIn),
		"down": float64(after.BytesOut - statsBefore.BytesOut),
	} {
		if got := c.MetricValue(t, series[k]) - before[k]; got != want || got <= 0 {
			t.Errorf("%s grew by %v, want %v (as /prelude/amqp/stats counted)", series[k], got, want)
		}
	}
}
