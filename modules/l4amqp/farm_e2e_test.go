package l4amqp_test

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestUpstreamTLS: a member reached over TLS (an amqps port), its
// certificate checked against a CA file and a server name.
func TestUpstreamTLS(t *testing.T) {
	e2e.RequireRabbit(t)
	ca := e2e.NewTestCA(t)
	tlsAddr := e2e.StartTLSRelay(t, ca, e2e.RabbitAddr)
	h := handler(map[string]any{"vhosts": []string{e2e.VhostB}, "upstreams": []any{map[string]any{
		"address": tlsAddr, "tls": map[string]any{"ca": ca.CAFile, "server_name": "broker.test"},
	}}})
	t.Run("trusted", func(t *testing.T) {
		c, addr := startProxy(t, h)
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		roundTrip(t, conn, 20)
		if s := sessions(t, c, ""); len(s) != 1 || s[0].Upstream != tlsAddr {
			t.Fatalf("sessions: %+v", s)
		}
	})
	t.Run("unknown CA", func(t *testing.T) {
		other := e2e.NewTestCA(t)
		h := handler(map[string]any{"vhosts": []string{e2e.VhostB}, "upstreams": []any{map[string]any{
			"address": tlsAddr, "tls": map[string]any{"ca": other.CAFile, "server_name": "broker.test"},
		}}})
		_, addr := startProxy(t, h)
		_, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
		var aerr *amqp091.Error
		if !errors.As(err, &aerr) || aerr.Code != 320 || !strings.Contains(aerr.Reason, "certificate") {
			t.Fatalf("dial through a member with an unknown certificate: %v, want 320 naming the certificate", err)
		}
	})
}

// TestUpstreamClientCertificate: a member that requires a client
// certificate (mutual TLS) is reached with the tls block's cert and key; a
// proxy without them is refused by the member, and its client gets a Close
// saying the broker could not be reached, not a hang or a reset.
func TestUpstreamClientCertificate(t *testing.T) {
	e2e.RequireRabbit(t)
	ca := e2e.NewTestCA(t)
	tlsAddr := e2e.StartMutualTLSRelay(t, ca, e2e.RabbitAddr)
	cert, key := ca.ClientCert(t)
	member := func(tlsCfg map[string]any) map[string]any {
		return handler(map[string]any{"vhosts": []string{e2e.VhostB}, "upstreams": []any{map[string]any{
			"address": tlsAddr, "tls": tlsCfg,
		}}})
	}
	t.Run("with cert and key", func(t *testing.T) {
		_, addr := startProxy(t, member(map[string]any{"ca": ca.CAFile, "server_name": "broker.test", "cert": cert, "key": key}))
		roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 20)
	})
	t.Run("without", func(t *testing.T) {
		_, addr := startProxy(t, member(map[string]any{"ca": ca.CAFile, "server_name": "broker.test"}))
		_, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
		var aerr *amqp091.Error
		if !errors.As(err, &aerr) || aerr.Code != 320 || !strings.Contains(aerr.Reason, "certificate required") {
			t.Fatalf("dial through a member that wants a client certificate: %v, want Close 320 saying a certificate is required", err)
		}
	})
}

// TestProxyProtocolToBrokers: with proxy_protocol v1 or v2 the broker
// receives a PROXY header naming the real client.
func TestProxyProtocolToBrokers(t *testing.T) {
	e2e.RequireRabbit(t)
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			pp := e2e.StartProxyProtocolRelay(t, e2e.RabbitAddr)
			v := vhosts([]string{pp.Addr}, e2e.VhostB)
			v["proxy_protocol"] = version
			_, addr := startProxy(t, handler(v))
			conn := dial(t, e2e.URL(addr, e2e.VhostB))
			roundTrip(t, conn, 5)
			client := conn.LocalAddr().(*net.TCPAddr)
			hs := pp.Headers()
			if len(hs) != 1 {
				t.Fatalf("%d PROXY headers", len(hs))
			}
			src, ok := hs[0].SourceAddr.(*net.TCPAddr)
			if !ok || src.Port != client.Port || int(hs[0].Version) != int(version[1]-'0') {
				t.Fatalf("header %+v, want version %s and source %v", hs[0], version, client)
			}
			_ = conn.Close()
		})
	}
}

// TestPreferZone: members of the preferred zone take every connection while
// they are up; the others are the fallback.
func TestPreferZone(t *testing.T) {
	e2e.RequireRabbit(t)
	east := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	west := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	h := handler(map[string]any{"vhosts": []string{e2e.VhostB}, "prefer_zone": "west", "upstreams": []any{
		map[string]any{"address": east.Addr, "zone": "east"},
		map[string]any{"address": west.Addr, "zone": "west"},
	}})
	_, addr := startProxy(t, h)
	for range 4 {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		_ = conn.Close()
	}
	if east.Conns.Load() != 0 || west.Conns.Load() != 4 {
		t.Fatalf("east %d, west %d: want every connection in the preferred zone", east.Conns.Load(), west.Conns.Load())
	}
	west.Close()
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	_ = conn.Close()
	if east.Conns.Load() != 1 {
		t.Fatalf("with west down, east got %d connections", east.Conns.Load())
	}
}

// TestActiveHealthChecks: a member that accepts TCP but never answers the
// AMQP header (what a connect check cannot see) is marked unhealthy by the
// AMQP probe, shown so in GET /prelude/farms and the metrics, and skipped.
func TestActiveHealthChecks(t *testing.T) {
	e2e.RequireRabbit(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // hold it open, say nothing
		}
	}()
	v := vhosts([]string{silent.Addr().String(), e2e.RabbitAddr}, e2e.VhostB)
	v["health_interval"] = "200ms"
	v["health_timeout"] = "300ms"
	c, addr := startProxy(t, handler(v))
	waitFor(t, "the silent member to be marked unhealthy", func() bool {
		return c.MetricValue(t, `caddy_layer4_farm_member_healthy{member="`+silent.Addr().String()+`"}`) == 0 &&
			c.MetricValue(t, `caddy_layer4_farm_member_healthy{member="`+e2e.RabbitAddr+`"}`) == 1
	})
	code, body := c.Get(t, "/prelude/farms")
	var farms []struct {
		Name    string `json:"name"`
		Members []struct {
			Address     string `json:"address"`
			Healthy     bool   `json:"healthy"`
			HealthError string `json:"health_error"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(body), &farms); code != 200 || err != nil || len(farms) == 0 {
		t.Fatalf("GET /prelude/farms: %d %s", code, body)
	}
	found := false
	for _, f := range farms {
		for _, m := range f.Members {
			if m.Address == silent.Addr().String() {
				found = !m.Healthy && strings.Contains(m.HealthError, "Connection.Start")
			}
		}
	}
	if !found {
		t.Fatalf("farms: %s", body)
	}
	for range 4 {
		start := time.Now()
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("dial took %v: the unhealthy member was tried", d)
		}
		_ = conn.Close()
	}
}

// TestSRVMembersAndDrainRemoved: members come from an SRV record through a
// loopback DNS server; when DNS drops a member, drain_removed closes its
// sessions with Close 320 and new clients go to the others. A config push
// that drops a member does the same.
func TestSRVMembersAndDrainRemoved(t *testing.T) {
	e2e.RequireRabbit(t)
	a := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	b := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, portA, _ := net.SplitHostPort(a.Addr)
	_, portB, _ := net.SplitHostPort(b.Addr)
	dns := e2e.StartDNS(t)
	dns.Set("a.farm.test", "127.0.0.1")
	dns.Set("b.farm.test", "127.0.0.1")
	dns.SetSRV("_amqp._tcp.farm.test", "a.farm.test:"+portA, "b.farm.test:"+portB)
	v := vhosts([]string{"srv+_amqp._tcp.farm.test"}, e2e.VhostB)
	v["resolver"], v["dns_refresh"], v["drain_removed"] = dns.Addr, "200ms", true
	c, addr := startProxy(t, handler(v))

	type client struct {
		conn   *amqp091.Connection
		closed chan *amqp091.Error
	}
	var clients []client
	for range 2 {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		clients = append(clients, client{conn, conn.NotifyClose(make(chan *amqp091.Error, 1))})
	}
	if a.Conns.Load() != 1 || b.Conns.Load() != 1 {
		t.Fatalf("SRV members got %d and %d connections, want one each", a.Conns.Load(), b.Conns.Load())
	}
	var onB client
	for i, s := range sessions(t, c, "") {
		if s.Upstream == b.Addr {
			onB = clients[i]
		}
	}
	dns.SetSRV("_amqp._tcp.farm.test", "a.farm.test:"+portA)
	select {
	case err := <-onB.closed:
		if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "removed") {
			t.Fatalf("the session on the removed member closed with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("drain_removed did not close the removed member's session")
	}
	for range 2 {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		_ = conn.Close()
	}
	if b.Conns.Load() != 1 || a.Conns.Load() != 3 {
		t.Fatalf("after the removal: a %d, b %d connections", a.Conns.Load(), b.Conns.Load())
	}
	waitFor(t, "only the session on the remaining member to be left", func() bool {
		s := sessions(t, c, "")
		return len(s) == 1 && s[0].Upstream == a.Addr
	})
}

// TestDrainRemovedByConfig: a config push that drops a member closes its
// sessions (drain_removed) and leaves the others.
func TestDrainRemovedByConfig(t *testing.T) {
	e2e.RequireRabbit(t)
	a := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	b := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	addr := e2e.FreePort(t)
	config := func(to ...string) map[string]any {
		v := vhosts(to, e2e.VhostB)
		v["drain_removed"] = true
		return e2e.Layer4(addr, route(handler(v)))
	}
	c := e2e.StartCaddy(t, config(a.Addr, b.Addr))
	c.NoLeak(e2e.TestPassword)
	var closed []chan *amqp091.Error
	for range 2 {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		closed = append(closed, conn.NotifyClose(make(chan *amqp091.Error, 1)))
	}
	c.Reload(t, config(a.Addr))
	waitFor(t, "the session on the dropped member to close", func() bool {
		s := sessions(t, c, "")
		return len(s) == 1 && s[0].Upstream == a.Addr
	})
	// The proxy lists the session as gone before the client library has
	// handed its Close to NotifyClose: wait for the one close, then check
	// that the other client is still open.
	n := 0
	deadline := time.After(3 * time.Second)
	for n == 0 {
		select {
		case err := <-closed[0]:
			checkClose320(t, err)
			n++
			closed[0] = nil
		case err := <-closed[1]:
			checkClose320(t, err)
			n++
			closed[1] = nil
		case <-deadline:
			t.Fatal("no client was closed, want the one on the dropped member")
		}
	}
	time.Sleep(100 * time.Millisecond)
	for _, ch := range closed {
		select {
		case err := <-ch:
			t.Fatalf("the client on the remaining member was closed too: %v", err)
		default:
		}
	}
}

func checkClose320(t *testing.T, err *amqp091.Error) {
	t.Helper()
	if err == nil || err.Code != 320 {
		t.Fatalf("closed with %v, want Close 320", err)
	}
}

// TestAMQPSFromClients: caddy-l4's tls handler terminates amqps in front
// of the amqp handler (a certificate from a test CA); the client verifies
// it and its session is routed like any other.
func TestAMQPSFromClients(t *testing.T) {
	e2e.RequireRabbit(t)
	ca := e2e.NewTestCA(t)
	addr := e2e.FreePort(t)
	cfg := map[string]any{"apps": map[string]any{
		"tls": map[string]any{"certificates": map[string]any{"load_files": []any{
			map[string]any{"certificate": ca.ServerCertFile, "key": ca.ServerKeyFile},
		}}},
		"layer4": map[string]any{"servers": map[string]any{"amqps": map[string]any{
			"listen": []string{addr},
			"routes": []any{
				map[string]any{"match": []any{map[string]any{"tls": map[string]any{}}}, "handle": []any{map[string]any{"handler": "tls"}}},
				route(handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB))),
			},
		}}},
	}}
	c := e2e.StartCaddy(t, cfg)
	c.NoLeak(e2e.TestPassword)
	url := strings.Replace(e2e.URL(addr, e2e.VhostB), "amqp://", "amqps://", 1)
	conn, err := amqp091.DialTLS(url, &tls.Config{RootCAs: ca.Pool, ServerName: "broker.test"})
	if err != nil {
		t.Fatalf("amqps through the proxy: %v", err)
	}
	defer conn.Close()
	roundTrip(t, conn, 20)
	if s := sessions(t, c, ""); len(s) != 1 || s[0].VHost != e2e.VhostB || s[0].BytesIn == 0 {
		t.Fatalf("sessions: %+v", s)
	}
}

// TestUpstreamTLSWithPlaceholders: an upstream block whose address holds
// placeholders keeps its TLS options for the members it expands to, and
// checks each member's certificate against the expanded host when the
// block names no server.
func TestUpstreamTLSWithPlaceholders(t *testing.T) {
	e2e.RequireRabbit(t)
	ca := e2e.NewTestCA(t)
	tlsAddr := e2e.StartTLSRelay(t, ca, e2e.RabbitAddr)
	_, port, _ := net.SplitHostPort(tlsAddr)
	h := handler(map[string]any{"vhosts": []string{e2e.VhostB}, "upstreams": []any{map[string]any{
		"address": "{env.PRELUDE_TEST_MEMBER_HOST}:" + port, "tls": map[string]any{"ca": ca.CAFile},
	}}})
	c, addr := startProxy(t, h)

	t.Setenv("PRELUDE_TEST_MEMBER_HOST", "127.0.0.1") // in the certificate
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, conn, 20)
	if s := sessions(t, c, ""); len(s) != 1 || s[0].Upstream != tlsAddr {
		t.Fatalf("sessions: %+v", s)
	}
	_ = conn.Close()

	t.Setenv("PRELUDE_TEST_MEMBER_HOST", "localhost") // not in the certificate
	_, err := amqp091.Dial(e2e.URL(addr, e2e.VhostB))
	var aerr *amqp091.Error
	if !errors.As(err, &aerr) || aerr.Code != 320 || !strings.Contains(aerr.Reason, "certificate") {
		t.Fatalf("a member whose certificate does not name the expanded host: %v, want 320 naming the certificate", err)
	}
}
