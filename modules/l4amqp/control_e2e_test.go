package l4amqp_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/l4amqp"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)

func sessions(t *testing.T, c *e2e.Caddy, query string) []l4amqp.Session {
	t.Helper()
	code, body := c.Get(t, "/prelude/amqp/sessions"+query)
	var out []l4amqp.Session
	if err := json.Unmarshal([]byte(body), &out); code != http.StatusOK || err != nil {
		t.Fatalf("GET sessions: %d %s", code, body)
	}
	return out
}

func amqpStats(t *testing.T, c *e2e.Caddy) l4amqp.Stats {
	t.Helper()
	code, body := c.Get(t, "/prelude/amqp/stats")
	var out l4amqp.Stats
	if err := json.Unmarshal([]byte(body), &out); code != http.StatusOK || err != nil {
		t.Fatalf("GET stats: %d %s", code, body)
	}
	if strings.Contains(body, e2e.TestPassword) {
		t.Fatal("stats carry the password")
	}
	return out
}

func vhostCounters(s l4amqp.Stats, vhost string) l4amqp.Counters {
	if c := s.VHosts[vhost]; c != nil {
		return *c
	}
	return l4amqp.Counters{}
}

func mustDo(t *testing.T, c *e2e.Caddy, method, path string, want int) string {
	t.Helper()
	code, body := c.Do(t, method, path)
	if code != want {
		t.Fatalf("%s %s: %d %s, want %d", method, path, code, body, want)
	}
	return body
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestSwitchVHostToAnotherFarm is amqpprox's procedure, done with Caddy's
// admin API alone: pause the vhost, push a config that maps it to another
// farm, sever the vhost's sessions (gracefully: Close 320), resume. Clients
// that connected during the pause are held and then land on the new farm;
// no client is left on the old one, and every counter matches.
func TestSwitchVHostToAnotherFarm(t *testing.T) {
	e2e.RequireRabbit(t)
	farmA := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	farmB := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	addr := e2e.FreePort(t)
	config := func(to string) map[string]any {
		return e2e.Layer4(addr, route(handler(vhosts([]string{to}, e2e.VhostA))))
	}
	c := e2e.StartCaddy(t, config(farmA.Addr))
	c.NoLeak(e2e.TestPassword)
	waitFor(t, "earlier sessions to end", func() bool { return amqpStats(t, c).Overall.Active == 0 })
	before := vhostCounters(amqpStats(t, c), e2e.VhostA)

	// Two clients on farm A.
	var old []*amqp091.Connection
	closed := make([]chan *amqp091.Error, 2)
	for i := range 2 {
		conn := dial(t, e2e.URL(addr, e2e.VhostA))
		closed[i] = conn.NotifyClose(make(chan *amqp091.Error, 1))
		old = append(old, conn)
	}
	live := sessions(t, c, "?vhost="+e2e.VhostA)
	if len(live) != 2 || live[0].Upstream != farmA.Addr || live[0].User != e2e.TestUser {
		t.Fatalf("sessions before the switch: %+v", live)
	}

	// Pause; three clients connect and are held after Open.
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostA+"/pause", http.StatusOK)
	held := make(chan *amqp091.Connection, 3)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := amqp091.Dial(e2e.URL(addr, e2e.VhostA))
			if err != nil {
				t.Errorf("held client: %v", err)
				return
			}
			held <- conn
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if len(held) != 0 {
		t.Fatal("a client got through a paused vhost")
	}

	// Push the config that moves the vhost to farm B, sever its sessions.
	c.Reload(t, config(farmB.Addr))
	body := mustDo(t, c, http.MethodDelete, "/prelude/amqp/vhosts/"+e2e.VhostA+"/sessions?graceful=1", http.StatusOK)
	if !strings.Contains(body, `"severed":2`) {
		t.Fatalf("sever: %s", body)
	}
	for i, ch := range closed {
		select {
		case err := <-ch:
			if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "closed by an operator") {
				t.Fatalf("old client %d closed with %v, want 320 from an operator", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("old client %d was not closed", i)
		}
		_ = old[i].Close()
	}

	// Resume: the held clients land on farm B.
	bConns := farmB.Conns.Load()
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostA+"/resume", http.StatusOK)
	wg.Wait()
	close(held)
	var clients []*amqp091.Connection
	for conn := range held {
		clients = append(clients, conn)
		roundTrip(t, conn, 20)
	}
	if len(clients) != 3 || farmB.Conns.Load()-bConns != 3 {
		t.Fatalf("%d held clients connected, farm B got %d connections", len(clients), farmB.Conns.Load()-bConns)
	}
	for _, s := range sessions(t, c, "?vhost="+e2e.VhostA) {
		if s.Upstream != farmB.Addr {
			t.Fatalf("a session is still on %s after the switch: %+v", s.Upstream, s)
		}
	}
	for _, conn := range clients {
		_ = conn.Close()
	}
	waitFor(t, "sessions to end", func() bool { return len(sessions(t, c, "?vhost="+e2e.VhostA)) == 0 })

	after := vhostCounters(amqpStats(t, c), e2e.VhostA)
	delta := func(name string, a, b uint64, want uint64) {
		if a-b != want {
			t.Errorf("%s: %d, want %d", name, a-b, want)
		}
	}
	delta("accepted", after.Accepted, before.Accepted, 5)
	delta("severed", after.Closes["severed"], before.Closes["severed"], 2)
	delta("clean closes", after.Closes["clean"], before.Closes["clean"], 3)
	if after.Active != 0 {
		t.Errorf("active %d after every client left", after.Active)
	}
	if after.BytesIn <= before.BytesIn || after.BytesOut <= before.BytesOut {
		t.Errorf("bytes did not grow: %+v -> %+v", before, after)
	}
}

// TestSeverMidPublish kills a session while its client publishes: the
// client library's NotifyClose fires.
func TestSeverMidPublish(t *testing.T) { eachRelay(t, testSeverMidPublish) }

func testSeverMidPublish(t *testing.T, relay string) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB))
	h["relay"] = relay
	c, addr := startProxy(t, h)
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if ch.Publish("", "prelude-sever-test", false, false, amqp091.Publishing{Body: make([]byte, 4096)}) != nil {
				return
			}
		}
	}()
	defer close(stop)
	time.Sleep(100 * time.Millisecond)
	live := sessions(t, c, "?vhost="+e2e.VhostB)
	if len(live) != 1 || live[0].BytesIn == 0 || live[0].Relay != relay {
		t.Fatalf("sessions: %+v, want one relayed by %q", live, relay)
	}
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/sessions/"+itoa(live[0].ID), http.StatusOK)
	select {
	case err := <-closed:
		if err == nil {
			t.Fatal("NotifyClose fired without an error for a severed session")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("NotifyClose did not fire")
	}
	waitFor(t, "the severed session to leave the registry", func() bool {
		code, _ := c.Do(t, http.MethodDelete, "/prelude/amqp/sessions/"+itoa(live[0].ID))
		return code == http.StatusNotFound
	})
}

// TestSeverMidDelivery: a session severed gracefully while the broker
// streams deliveries to it (each body three frames at the default
// frame_max) still gets a Connection.Close it can parse — 320 with the
// operator's reason — because the relay finishes the frame it was in before
// writing the Close. The client receives only whole messages, and every
// message is back in the queue afterwards (unacknowledged deliveries are
// requeued). Where the stream stands at the sever is up to the broker's
// timing, mid-frame in most runs; TestFinishFrame covers that case every time.
func TestSeverMidDelivery(t *testing.T) { eachRelay(t, testSeverMidDelivery) }

func testSeverMidDelivery(t *testing.T, relay string) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB))
	h["relay"] = relay
	c, addr := startProxy(t, h)
	const queue, messages = "prelude-sever-delivery-test", 100
	direct := dial(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	dch, err := direct.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dch.QueueDelete(queue, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := dch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = dch.QueueDelete(queue, false, false, false) })
	if err := dch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 256<<10)
	for i := range messages {
		conf, err := dch.PublishWithDeferredConfirm("", queue, false, false, amqp091.Publishing{Body: body})
		if err != nil || !conf.Wait() {
			t.Fatalf("publish %d: %v", i, err)
		}
	}

	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan struct{})
	var got, whole int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			if got++; got == 1 {
				close(first)
			}
			if len(d.Body) == len(body) {
				whole++
			}
		}
	}()
	select {
	case <-first:
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery through the proxy")
	}
	id, ok := sessionOf(t, c, conn.LocalAddr())
	if !ok {
		t.Fatalf("the consumer is not in /prelude/amqp/sessions: %+v", sessions(t, c, ""))
	}
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/sessions/"+itoa(id)+"?graceful=1", http.StatusOK)
	select {
	case err := <-closed:
		if err == nil || err.Code != amqp091.ConnectionForced || !strings.Contains(err.Reason, "closed by an operator") {
			t.Fatalf("severed mid-delivery: %v, want 320 closed by an operator", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("NotifyClose did not fire")
	}
	<-done
	if got == 0 || whole != got {
		t.Fatalf("%d deliveries before the Close, %d of them whole", got, whole)
	}
	waitFor(t, "every message back in the queue", func() bool {
		q, err := dch.QueueDeclarePassive(queue, false, false, false, false, nil)
		return err == nil && q.Messages == messages
	})
}

// eachRelay runs test once with each relay of plain TCP sessions: the
// event loops (the default) and a goroutine per direction.
func eachRelay(t *testing.T, test func(t *testing.T, relay string)) {
	for _, relay := range []string{"loop", "goroutines"} {
		t.Run(relay, func(t *testing.T) { test(t, relay) })
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func errorsAs(err error, target **amqp091.Error) bool { return errors.As(err, target) }

// TestPauseTimeout: a client held longer than pause_timeout gets Close 320
// saying the vhost is paused.
func TestPauseTimeout(t *testing.T) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB))
	h["pause_timeout"] = "400ms"
	c, addr := startProxy(t, h)
	before := vhostCounters(amqpStats(t, c), e2e.VhostB)
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/pause", http.StatusOK)
	defer mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/resume", http.StatusOK)
	_, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
	var aerr *amqp091.Error
	if !errorsAs(err, &aerr) || aerr.Code != 320 || !strings.Contains(aerr.Reason, "paused") {
		t.Fatalf("dial to a paused vhost: %v, want Close 320 saying it is paused", err)
	}
	waitFor(t, "the pause_timeout refusal to be counted", func() bool {
		after := vhostCounters(amqpStats(t, c), e2e.VhostB)
		return after.Refused["pause_timeout"]-before.Refused["pause_timeout"] == 1
	})
}

// TestLimits: max_connections and connection_rate refuse with a Close whose
// text names the limit; data_rate throttles the client's publishing.
func TestLimits(t *testing.T) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB))
	h["routes"].([]map[string]any)[0]["limits"] = map[string]any{"max_connections": 2}
	h["limits"] = map[string]any{"connection_rate": "5/10s"}
	c, addr := startProxy(t, h)
	before := vhostCounters(amqpStats(t, c), e2e.VhostB)
	a, b := dial(t, e2e.URL(addr, e2e.VhostB)), dial(t, e2e.URL(addr, e2e.VhostB))
	_, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
	var aerr *amqp091.Error
	if !errorsAs(err, &aerr) || aerr.Code != 530 || !strings.Contains(aerr.Reason, "max_connections 2") {
		t.Fatalf("third client: %v, want 530 naming max_connections", err)
	}
	_ = a.Close()
	_ = b.Close()
	waitFor(t, "sessions to end", func() bool { return len(sessions(t, c, "")) == 0 })
	// 2 tokens of 5 used; two more pass, the sixth connection is refused by rate.
	var refused error
	for range 4 {
		conn, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
		if err != nil {
			refused = err
			break
		}
		_ = conn.Close()
		waitFor(t, "session to end", func() bool { return len(sessions(t, c, "")) == 0 })
	}
	if !errorsAs(refused, &aerr) || aerr.Code != 530 || !strings.Contains(aerr.Reason, "connection_rate 5/10s") {
		t.Fatalf("rate limit: %v, want 530 naming connection_rate", refused)
	}
	waitFor(t, "two limit refusals to be counted", func() bool {
		after := vhostCounters(amqpStats(t, c), e2e.VhostB)
		return after.Refused["limit"]-before.Refused["limit"] == 2
	})
}

// TestManyConnectionsLeaveNothing opens and closes 1000 connections through
// the proxy: no session stays active and no goroutine leaks.
func TestManyConnectionsLeaveNothing(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)))
	warm := dial(t, e2e.URL(addr, e2e.VhostB))
	_ = warm.Close()
	waitFor(t, "warm-up session to end", func() bool { return len(sessions(t, c, "")) == 0 })
	base := runtime.NumGoroutine()
	before := amqpStats(t, c).Overall
	var wg sync.WaitGroup
	work := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				conn, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
				if err != nil {
					t.Error(err)
					return
				}
				_ = conn.Close()
			}
		}()
	}
	for range 1000 {
		work <- struct{}{}
	}
	close(work)
	wg.Wait()
	waitFor(t, "all sessions to end", func() bool { return amqpStats(t, c).Overall.Active == 0 })
	after := amqpStats(t, c).Overall
	if after.Accepted-before.Accepted != 1000 || after.Closes["clean"]-before.Closes["clean"] != 1000 {
		t.Fatalf("accepted %d, clean closes %d; want 1000 each", after.Accepted-before.Accepted, after.Closes["clean"]-before.Closes["clean"])
	}
	waitFor(t, "goroutines to settle", func() bool { return runtime.NumGoroutine() <= base+10 })
}

// TestControlPlaneErrors: wrong methods are 405, unknown ids 404, as JSON.
func TestControlPlaneErrors(t *testing.T) {
	c, _ := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)))
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodPost, "/prelude/amqp/sessions", http.StatusMethodNotAllowed},
		{http.MethodPut, "/prelude/amqp/sessions/1", http.StatusMethodNotAllowed},
		{http.MethodGet, "/prelude/amqp/sessions/999999", http.StatusNotFound},
		{http.MethodPut, "/prelude/amqp/captures", http.StatusMethodNotAllowed},
		{http.MethodGet, "/prelude/amqp/captures/abc", http.StatusMethodNotAllowed},
		{http.MethodPost, "/prelude/amqp/trace", http.StatusMethodNotAllowed},
		{http.MethodGet, "/prelude/amqp/trace?session=x", http.StatusBadRequest},
		{http.MethodDelete, "/prelude/amqp/sessions/999999", http.StatusNotFound},
		{http.MethodDelete, "/prelude/amqp/sessions/abc", http.StatusNotFound},
		{http.MethodGet, "/prelude/amqp/vhosts/%2F/pause", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/prelude/amqp/stats", http.StatusMethodNotAllowed},
		{http.MethodGet, "/prelude/amqp/nothing", http.StatusNotFound},
	} {
		code, body := c.Do(t, tc.method, tc.path)
		var e map[string]any
		if code != tc.want || json.Unmarshal([]byte(body), &e) != nil || e["error"] == nil {
			t.Errorf("%s %s: %d %s; want %d with a JSON error", tc.method, tc.path, code, body, tc.want)
		}
	}
	// The "/" vhost is %2F in a path; no route of this config serves it,
	// so a pause of it is refused, naming the routes.
	if body := mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/%2F/pause", http.StatusNotFound); !strings.Contains(body, e2e.VhostB) {
		t.Fatalf("pause of an unserved vhost: %s", body)
	}
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/pause", http.StatusOK)
	if body := mustDo(t, c, http.MethodGet, "/prelude/amqp/vhosts", http.StatusOK); !strings.Contains(body, `"`+e2e.VhostB+`"`) {
		t.Fatalf("paused vhosts: %s", body)
	}
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/resume", http.StatusOK)
}

// TestDataRate: a vhost with data_rate 4MiB/s takes about a second to carry
// 4 MiB from the client, where the unthrottled path takes a fraction.
func TestDataRate(t *testing.T) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB))
	h["routes"].([]map[string]any)[0]["limits"] = map[string]any{"data_rate": "4MiB/s"}
	_, addr := startProxy(t, h)
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var last *amqp091.DeferredConfirmation
	for range 32 {
		last, err = ch.PublishWithDeferredConfirm("", "prelude-data-rate-test", false, false, amqp091.Publishing{Body: make([]byte, 128<<10)})
		if err != nil {
			t.Fatal(err)
		}
	}
	last.Wait()
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Fatalf("4 MiB at data_rate 4MiB/s took %v: not throttled", d)
	}
}

// TestStatsClassification: every way a connection can end is counted under
// its reason, overall and per vhost, upstream and source.
func TestStatsClassification(t *testing.T) {
	e2e.RequireRabbit(t)
	member := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	dead := e2e.FreePort(t)
	h := handler(vhosts([]string{member.Addr}, e2e.VhostB), vhosts([]string{dead}, e2e.VhostA))
	c, addr := startProxy(t, h)
	// Sessions of earlier tests end on their own time: count from quiet.
	waitFor(t, "earlier sessions to end", func() bool { return amqpStats(t, c).Overall.Active == 0 })
	before := amqpStats(t, c)

	// clean: Connection.Close from the client.
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	_ = conn.Close()
	// client_dropped: the client's socket closes without a Close.
	var raw net.Conn
	conn, err := amqp091.DialConfig(e2e.URL(addr, e2e.VhostB), amqp091.Config{Dial: func(network, a string) (net.Conn, error) {
		c, err := net.Dial(network, a)
		raw = c
		return c, err
	}})
	if err != nil {
		t.Fatal(err)
	}
	_ = raw.Close()
	_ = conn.Close()
	// broker_dropped: the path to the broker dies.
	conn = dial(t, e2e.URL(addr, e2e.VhostB))
	waitFor(t, "the session to be listed", func() bool { return len(sessions(t, c, "")) == 1 })
	member.Cut()
	waitFor(t, "sessions to end", func() bool { return len(sessions(t, c, "")) == 0 })
	_ = conn.Close()
	// auth: the broker refuses the password.
	if _, err := amqp091.Dial(strings.Replace(e2e.URL(addr, e2e.VhostB), e2e.TestPassword, "Wr0ng-pw-91b2", 1)); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	// no_route and failed_upstream.
	if _, err := amqp091.Dial(e2e.URL(addr, e2e.VhostOrders)); err == nil {
		t.Fatal("an unrouted vhost was accepted")
	}
	if _, err := amqp091.Dial(e2e.URL(addr, e2e.VhostA)); err == nil {
		t.Fatal("a vhost whose farm is down was accepted")
	}

	var after l4amqp.Stats
	want := func(s l4amqp.Stats) bool {
		o, b := s.Overall, before.Overall
		return o.Accepted-b.Accepted == 6 && o.Closes["clean"]-b.Closes["clean"] == 1 &&
			o.Closes["client_dropped"]-b.Closes["client_dropped"] == 1 &&
			o.Closes["broker_dropped"]-b.Closes["broker_dropped"] == 1 &&
			o.Refused["auth"]-b.Refused["auth"] == 1 && o.Refused["no_route"]-b.Refused["no_route"] == 1 &&
			o.FailedUpstream-b.FailedUpstream == 1 && o.Active == 0
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		after = amqpStats(t, c)
		if want(after) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("overall counters before %+v after %+v", before.Overall, after.Overall)
		}
	}
	up := after.Upstreams[member.Addr]
	if up == nil || up.Closes["clean"] < 1 || up.Closes["broker_dropped"] < 1 || up.BytesIn == 0 {
		t.Fatalf("upstream counters: %+v", up)
	}
	if src := after.Sources["127.0.0.1"]; src == nil || src.Accepted-sourceAccepted(before) != 6 {
		t.Fatalf("source counters: %+v", src)
	}
	// An unrouted name counts in one bucket, never under a key of its own
	// (an earlier test may have given /orders counters: it paused it).
	if a, b := after.VHosts[e2e.VhostOrders], before.VHosts[e2e.VhostOrders]; a != nil && (b == nil || a.Refused["no_route"] != b.Refused["no_route"]) {
		t.Fatalf("the unrouted vhost %s counted its refusal under its own name", e2e.VhostOrders)
	}
	if v := vhostCounters(after, "(not routed)"); v.Refused["no_route"] < 1 {
		t.Fatalf("(not routed): %+v", v)
	}
	if up := after.Upstreams[member.Addr]; up.Accepted-upstreamAccepted(before, member.Addr) != 3 {
		t.Fatalf("upstream %s accepted %d sessions, want the 3 routed to it", member.Addr, up.Accepted-upstreamAccepted(before, member.Addr))
	}
}

func upstreamAccepted(s l4amqp.Stats, addr string) uint64 {
	if c := s.Upstreams[addr]; c != nil {
		return c.Accepted
	}
	return 0
}

func sourceAccepted(s l4amqp.Stats) uint64 {
	if c := s.Sources["127.0.0.1"]; c != nil {
		return c.Accepted
	}
	return 0
}

// TestPausedClientGetsHeartbeats: a held client that tuned a 1 s heartbeat
// receives heartbeat frames from the proxy while it waits, then Open-Ok at
// resume.
// TestHeldClientClosesOrMisbehaves: a client held by a paused vhost may
// still close, and gets Close-Ok; one that sends a frame before its Open-Ok
// gets Close 505. Neither is ever listed as a session.
func TestHeldClientClosesOrMisbehaves(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)))
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/pause", http.StatusOK)
	// A pause outlives the Caddy that took it (it is the process's): resume
	// it, or every later test of the vhost in this process would be held.
	defer mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/resume", http.StatusOK)
	holds := 0
	held := func() net.Conn {
		holds++
		conn := rawClient(t, addr)
		_, _ = conn.Write(amqp.Header091)
		readMethod(t, conn) // Start
		send(t, conn, plainStartOk())
		tune := readMethod(t, conn).(*amqp.Tune)
		send(t, conn, &amqp.TuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax})
		send(t, conn, &amqp.Open{VirtualHost: e2e.VhostB})
		waitFor(t, "the client to be held", func() bool {
			return strings.Count(c.Logs(), "amqp client held: vhost paused") == holds
		})
		return conn
	}

	var clients []net.Addr
	conn := held()
	clients = append(clients, conn.LocalAddr())
	send(t, conn, &amqp.Close{ReplyCode: amqp.ReplySuccess, ReplyText: "bye"})
	if m := readMethod(t, conn); !isCloseOk(m) {
		t.Fatalf("a held client's Close was answered with %T, want Close-Ok", m)
	}
	expectEOF(t, conn)

	conn = held()
	clients = append(clients, conn.LocalAddr())
	if _, err := conn.Write(amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameBody, Channel: 1, Payload: []byte("early")})); err != nil {
		t.Fatal(err)
	}
	expectClose(t, conn, amqp.ReplyUnexpectedFrame, "before Connection.Open-Ok")

	for _, a := range clients {
		if _, listed := sessionOf(t, c, a); listed {
			t.Fatalf("the held client %s is listed as a session", a)
		}
	}
}

// sessionOf finds the session of the client whose local address is client
// (sessions of earlier tests in this process may still be ending).
func sessionOf(t *testing.T, c *e2e.Caddy, client net.Addr) (uint64, bool) {
	t.Helper()
	for _, s := range sessions(t, c, "") {
		if s.Client == client.String() {
			return s.ID, true
		}
	}
	return 0, false
}

func isCloseOk(m amqp.Method) bool { _, ok := m.(*amqp.CloseOk); return ok }

func TestPausedClientGetsHeartbeats(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)))
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/pause", http.StatusOK)
	conn := rawClient(t, addr)
	_, _ = conn.Write(amqp.Header091)
	readMethod(t, conn) // Start
	send(t, conn, plainStartOk())
	tune := readMethod(t, conn).(*amqp.Tune)
	send(t, conn, &amqp.TuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax, Heartbeat: 1})
	send(t, conn, &amqp.Open{VirtualHost: e2e.VhostB})
	// Read whole frames only (a deadline in the middle of one would lose
	// the framing): heartbeats come every half second, so each read returns.
	heartbeats := 0
	for start := time.Now(); time.Since(start) < 2500*time.Millisecond; {
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		f, err := amqp.ReadFrame(conn, 1<<20)
		if err != nil {
			t.Fatalf("held client after %d heartbeats: %v", heartbeats, err)
		}
		if f.Type != amqp.FrameHeartbeat {
			t.Fatalf("a held client got a type %d frame", f.Type)
		}
		heartbeats++
	}
	if heartbeats < 4 {
		t.Fatalf("%d heartbeats in 2.5 s at a 1 s heartbeat, want one every half second", heartbeats)
	}
	mustDo(t, c, http.MethodPost, "/prelude/amqp/vhosts/"+e2e.VhostB+"/resume", http.StatusOK)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := amqp.ReadFrame(conn, 1<<20)
		if err != nil {
			t.Fatalf("no Open-Ok after resume: %v", err)
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		m, err := amqp.ParseMethod(f.Payload)
		if _, ok := m.(*amqp.OpenOk); err != nil || !ok {
			t.Fatalf("after resume: %T %v, want Open-Ok", m, err)
		}
		return
	}
}
