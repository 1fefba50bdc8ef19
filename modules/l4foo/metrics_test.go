package l4foo_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestMetricsAgreeWithStats: every caddy_layer4_foo_* series on /metrics
// says what GET /prelude/foo/stats says for the same set — totals by type,
// invalid lines, live connections, rates in messages per second, latency
// quantiles in seconds — after traffic that has all of them.
func TestMetricsAgreeWithStats(t *testing.T) {
	const set = "metrics-test"
	srv := footest.StartServer(t, footest.ServerOptions{Greeting: "HELLO"})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"stats": set}))

	// A connection that stays open: one request answered, one invalid line.
	held, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_ = held.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprint(held, "REQ 1 hello\nnot a request\n"); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewReader(held)
	for range 2 { // the greeting, then the answer
		if _, err := lines.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	got, err := footest.Run(addr, footest.ClientOptions{Requests: 100, Pipelined: true})
	if err != nil {
		t.Fatal(err)
	}

	var r foo.Report
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if r = statsOf(t, c, set); r.ActiveConns == 1 || time.Now().After(deadline) {
			break
		}
	}
	if int(r.MsgReq) != got.Req+1 || int(r.MsgAck+r.MsgNak) != got.Ack+got.Nak+1 || r.InvalidLines != 3 || r.ActiveConns != 1 {
		t.Fatalf("stats %+v; the client sent %d requests and got %d answers, plus one of each on the held connection; want 3 invalid lines (2 greetings, 1 from the client) and 1 live connection",
			r, got.Req, got.Ack+got.Nak)
	}
	metric := func(series string) float64 { return c.MetricValue(t, series) }
	for series, want := range map[string]float64{
		`caddy_layer4_foo_messages_total{stats="` + set + `",type="req"}`:       float64(r.MsgReq),
		`caddy_layer4_foo_messages_total{stats="` + set + `",type="ack"}`:       float64(r.MsgAck),
		`caddy_layer4_foo_messages_total{stats="` + set + `",type="nak"}`:       float64(r.MsgNak),
		`caddy_layer4_foo_invalid_lines_total{stats="` + set + `"}`:             float64(r.InvalidLines),
		`caddy_layer4_foo_connections_active{stats="` + set + `"}`:              1,
		`caddy_layer4_foo_latency_seconds{quantile="0.5",stats="` + set + `"}`:  r.LatencyP50ms / 1000,
		`caddy_layer4_foo_latency_seconds{quantile="0.99",stats="` + set + `"}`: r.LatencyP99ms / 1000,
	} {
		if got := metric(series); got != want {
			t.Errorf("%s = %v, want %v as in /prelude/foo/stats", series, got, want)
		}
	}
	if r.LatencyP99ms <= 0 {
		t.Errorf("no latency measured: %+v", r)
	}
	// Every message came within the last 10 s: the 10 s rates are the
	// totals over 10, in messages per second.
	for series, want := range map[string]float64{
		`caddy_layer4_foo_rate_per_second{direction="request",stats="` + set + `",window="10s"}`:  float64(r.MsgReq) / 10,
		`caddy_layer4_foo_rate_per_second{direction="response",stats="` + set + `",window="10s"}`: float64(r.MsgAck+r.MsgNak) / 10,
	} {
		if got := metric(series); math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
}

// statsOf reads GET /prelude/foo/stats for one named set.
func statsOf(t *testing.T, c *e2e.Caddy, name string) foo.Report {
	t.Helper()
	code, body := c.Get(t, "/prelude/foo/stats?name="+name)
	var r foo.Report
	if err := json.Unmarshal([]byte(body), &r); code != 200 || err != nil {
		t.Fatalf("stats of %s: %d %s", name, code, body)
	}
	return r
}
