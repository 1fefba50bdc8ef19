package l4foo_test

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4foo"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)

// config routes Foo on listen to upstream; opts add handler options.
func config(listen, upstream, recovery string, opts ...map[string]any) map[string]any {
	h := map[string]any{"handler": "foo", "to": []string{upstream}, "recovery": recovery, "max_line": 1024}
	for _, o := range opts {
		for k, v := range o {
			h[k] = v
		}
	}
	return e2e.Layer4(listen, map[string]any{
		"match":  []any{map[string]any{"foo": map[string]any{}}},
		"handle": []any{h},
	})
}

func stats(t *testing.T, c *e2e.Caddy) foo.Report {
	t.Helper()
	code, body := c.Get(t, "/prelude/foo/stats")
	if code != 200 {
		t.Fatalf("stats: %d %s", code, body)
	}
	var r foo.Report
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	return r
}

// waitIdle waits until no connection is active, so every line is counted.
func waitIdle(t *testing.T, c *e2e.Caddy) foo.Report {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r := stats(t, c)
		if r.ActiveConns == 0 || time.Now().After(deadline) {
			return r
		}
	}
}

// runClients runs one client after the other and adds up what they counted.
func runClients(t *testing.T, addr string, clients ...footest.ClientOptions) footest.Counts {
	t.Helper()
	var sum footest.Counts
	for _, o := range clients {
		got, err := footest.Run(addr, o)
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		sum.Req += got.Req
		sum.Ack += got.Ack
		sum.Nak += got.Nak
	}
	return sum
}

func TestReferenceTrafficCountsExactly(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json")))
	got, err := footest.Run(addr, footest.ClientOptions{Requests: 100})
	if err != nil {
		t.Fatal(err)
	}
	r := waitIdle(t, c)
	if r.MsgReq != 100 || int(r.MsgAck) != got.Ack || int(r.MsgNak) != got.Nak || r.MsgTotal != 200 || r.InvalidLines != 0 {
		t.Fatalf("client counted %+v, proxy %+v", got, r)
	}
	if got.Nak == 0 || got.Ack < 70 {
		t.Fatalf("traffic is not the reference's mix: %+v", got)
	}
	if r.RequestRate10s != 10 || r.LatencySamples != 100 {
		t.Fatalf("100 requests in the last 10 s: rate_10s %v, latency samples %d", r.RequestRate10s, r.LatencySamples)
	}
}

func TestHardCasesCountExactly(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{Greeting: "HELLO from the server", Reverse: 7, SplitWrite: true})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json")))
	want := runClients(t, addr,
		footest.ClientOptions{Requests: 500, Pipelined: true, SplitWrite: true},
		footest.ClientOptions{Requests: 50, NoFinalLF: true},
		footest.ClientOptions{Requests: 200, Pipelined: true, NoFinalLF: true})
	r := waitIdle(t, c)
	if int(r.MsgReq) != want.Req || int(r.MsgAck) != want.Ack || int(r.MsgNak) != want.Nak {
		t.Fatalf("clients counted %+v, proxy %+v", want, r)
	}
	if r.InvalidLines != 3 { // the greeting, once per connection
		t.Fatalf("invalid lines %d, want 3 greetings", r.InvalidLines)
	}
}

func TestLongLineClosesAndCounts(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json")))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Write([]byte("REQ 1 " + strings.Repeat("x", 2000) + "\n"))
	buf := make([]byte, 64)
	for {
		if _, err := conn.Read(buf); err != nil {
			break // closed by the proxy
		}
	}
	if r := waitIdle(t, c); r.InvalidLines != 1 || r.MsgReq != 0 {
		t.Fatalf("%+v", r)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, srv.Addr, filepath.Join(t.TempDir(), "foo.json")))
	if code, body := c.Get(t, "/prelude/foo/health"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Fatalf("health with a live upstream: %d %s", code, body)
	}
	if _, err := footest.Run(addr, footest.ClientOptions{Requests: 3}); err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c)
	c.WaitMetric(t, `caddy_layer4_foo_messages_total{stats="default",type="req"} 3`)
	if code, _ := c.Get(t, "/prelude/foo/stats?name=nope"); code != 404 {
		t.Fatalf("unknown set: %d", code)
	}
	dead := e2e.FreePort(t)
	c.Reload(t, config(addr, dead, filepath.Join(t.TempDir(), "foo.json")))
	code, body := c.Get(t, "/prelude/foo/health")
	if code != 503 || !strings.Contains(body, dead) {
		t.Fatalf("health with a dead upstream: %d %s", code, body)
	}
	// A client of the dead farm gets a NAK for its request, not a bare close.
	before := stats(t, c)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = conn.Write([]byte("REQ 41 hello\n"))
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "NAK 41 proxy: no upstream reachable\n" {
		t.Fatalf("request to a dead farm: %q, %v", got, err)
	}
	if r := stats(t, c); r.ProxyNAKs != 1 || r.MsgNak != before.MsgNak {
		t.Fatalf("the proxy's own NAK is counted in proxy_naks only: before %+v, after %+v", before, r)
	}
	c.WaitMetric(t, `caddy_layer4_foo_proxy_naks_total{stats="default"} 1`)
}

// TestTLSClientsCountExactly: caddy-l4's tls handler terminates TLS in
// front of the foo handler (a certificate from a test CA), so the handler
// reads the client through the TLS connection instead of its socket;
// every line is still counted, pipelined, split across writes, and a last
// one without LF.
func TestTLSClientsCountExactly(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{Reverse: 5})
	ca := e2e.NewTestCA(t)
	addr := e2e.FreePort(t)
	cfg := e2e.Layer4(addr,
		map[string]any{
			"match":  []any{map[string]any{"tls": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "tls"}},
		},
		map[string]any{
			"match": []any{map[string]any{"foo": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "foo", "to": []string{srv.Addr},
				"recovery": filepath.Join(t.TempDir(), "foo.json")}},
		})
	cfg["apps"].(map[string]any)["tls"] = map[string]any{"certificates": map[string]any{"load_files": []any{
		map[string]any{"certificate": ca.ServerCertFile, "key": ca.ServerKeyFile},
	}}}
	c := e2e.StartCaddy(t, cfg)
	dialTLS := func(addr string) (net.Conn, error) {
		return tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.Pool, ServerName: "broker.test"})
	}
	want := runClients(t, addr,
		footest.ClientOptions{Requests: 300, Pipelined: true, SplitWrite: true, Dial: dialTLS},
		footest.ClientOptions{Requests: 40, NoFinalLF: true, Dial: dialTLS})
	r := waitIdle(t, c)
	if int(r.MsgReq) != want.Req || int(r.MsgAck) != want.Ack || int(r.MsgNak) != want.Nak || r.InvalidLines != 0 {
		t.Fatalf("clients counted %+v, proxy %+v", want, r)
	}
}
