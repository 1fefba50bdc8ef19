package farm

import (
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/internal/e2e"
)

func provisioned(t *testing.T, f *Farm) *Farm {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := f.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Cleanup() })
	return f
}

func addrs(ms []*Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Addr)
	}
	return out
}

// listeners starts n loopback listeners that accept and hold connections.
func listeners(t *testing.T, n int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, e2e.ServeTCP(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }))
	}
	return out
}

func accept(context.Context, *Member, net.Conn) error { return nil }

func pick(t *testing.T, f *Farm, client net.Addr) *Lease {
	t.Helper()
	l, err := f.Dial(context.Background(), client, accept)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Release(); _ = l.Conn.Close() })
	return l
}

func TestRoundRobin(t *testing.T) {
	to := listeners(t, 3)
	f := provisioned(t, &Farm{To: to})
	var got []string
	for i := 0; i < 6; i++ {
		got = append(got, pick(t, f, nil).Member.Addr)
	}
	want := append(append([]string{}, to...), to...)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("round robin order %v, want %v", got, want)
	}
}

func TestFirst(t *testing.T) {
	to := listeners(t, 2)
	f := provisioned(t, &Farm{To: to, LBPolicy: "first"})
	for i := 0; i < 3; i++ {
		if got := pick(t, f, nil).Member.Addr; got != to[0] {
			t.Fatalf("first picked %s", got)
		}
	}
}

func TestLeastConnAndRelease(t *testing.T) {
	to := listeners(t, 2)
	f := provisioned(t, &Farm{To: to, LBPolicy: "least_conn"})
	a := pick(t, f, nil)
	b := pick(t, f, nil)
	if a.Member.Addr == b.Member.Addr {
		t.Fatalf("two picks on one member %s", a.Member.Addr)
	}
	b.Release()
	b.Release() // a second Release must not count twice
	if n := b.Member.Active(); n != 0 {
		t.Fatalf("released member has %d active", n)
	}
	for i := 0; i < 3; i++ {
		l := pick(t, f, nil)
		if l.Member.Addr != b.Member.Addr {
			t.Fatalf("least_conn picked the busy member")
		}
		l.Release()
	}
}

func TestIPHashIsSticky(t *testing.T) {
	to := listeners(t, 4)
	f := provisioned(t, &Farm{To: to, LBPolicy: "ip_hash"})
	seen := map[string]bool{}
	for _, ip := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.9.9", "192.168.1.1"} {
		client := &net.TCPAddr{IP: net.ParseIP(ip), Port: 1000}
		first := pick(t, f, client).Member.Addr
		seen[first] = true
		for port := 1001; port < 1005; port++ {
			client.Port = port
			if got := pick(t, f, client).Member.Addr; got != first {
				t.Fatalf("client %s moved from %s to %s", ip, first, got)
			}
		}
	}
	if len(seen) < 2 {
		t.Fatalf("five clients all hashed to one member")
	}
}

func TestRandomUsesEveryMember(t *testing.T) {
	to := listeners(t, 3)
	f := provisioned(t, &Farm{To: to, LBPolicy: "random"})
	seen := map[string]bool{}
	for i := 0; i < 60; i++ {
		l := pick(t, f, nil)
		seen[l.Member.Addr] = true
		l.Release()
	}
	if len(seen) != 3 {
		t.Fatalf("random used %d of 3 members in 60 picks", len(seen))
	}
}

func TestFailoverAndPassiveFailure(t *testing.T) {
	live := listeners(t, 1)[0]
	dead := e2e.FreePort(t)
	f := provisioned(t, &Farm{To: []string{dead, live}, LBPolicy: "first", FailDuration: caddy.Duration(time.Minute)})
	if got := pick(t, f, nil).Member.Addr; got != live {
		t.Fatalf("picked %s, want the live member", got)
	}
	ms, _ := f.Members(context.Background())
	if !ms[0].Failed(time.Now()) || ms[1].Failed(time.Now()) {
		t.Fatalf("failure marks: dead=%v live=%v", ms[0].Failed(time.Now()), ms[1].Failed(time.Now()))
	}
	// The failed member now goes last, even under "first".
	order, _ := f.candidates(context.Background(), nil, "", nil, false)
	if !reflect.DeepEqual(addrs(order), []string{live, dead}) {
		t.Fatalf("candidate order %v", addrs(order))
	}
}

func TestAttemptErrorsFailOverButFinalStops(t *testing.T) {
	to := listeners(t, 2)
	f := provisioned(t, &Farm{To: to, LBPolicy: "first", FailDuration: -1})
	var tried []string
	_, err := f.Dial(context.Background(), nil, func(_ context.Context, m *Member, _ net.Conn) error {
		tried = append(tried, m.Addr)
		return errors.New("broker said no")
	})
	var nm *NoMemberError
	if !errors.As(err, &nm) || len(tried) != 2 || !strings.Contains(err.Error(), "broker said no") {
		t.Fatalf("err %v after trying %v", err, tried)
	}
	tried = nil
	refusal := errors.New("access refused")
	_, err = f.Dial(context.Background(), nil, func(_ context.Context, m *Member, _ net.Conn) error {
		tried = append(tried, m.Addr)
		return Final(refusal)
	})
	if !errors.Is(err, refusal) || len(tried) != 1 {
		t.Fatalf("final error: %v after %v", err, tried)
	}
	for _, m := range tried {
		if f.member(m, memberOpts{}).Active() != 0 {
			t.Fatalf("failed attempt left a live count on %s", m)
		}
	}
}

func TestMaxConnections(t *testing.T) {
	to := listeners(t, 1)
	f := provisioned(t, &Farm{To: to, MaxConnections: 1})
	pick(t, f, nil)
	_, err := f.Dial(context.Background(), nil, accept)
	if err == nil || !strings.Contains(err.Error(), "at max_connections") {
		t.Fatalf("second connection: %v", err)
	}
}

func TestLBTryDurationRetries(t *testing.T) {
	addr := e2e.FreePort(t)
	f := provisioned(t, &Farm{To: []string{addr}, LBTryDuration: caddy.Duration(2 * time.Second),
		LBTryInterval: caddy.Duration(50 * time.Millisecond), FailDuration: -1})
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return
		}
		t.Cleanup(func() { _ = ln.Close() })
		c, _ := ln.Accept()
		t.Cleanup(func() { _ = c.Close() })
	}()
	l, err := f.Dial(context.Background(), nil, accept)
	if err != nil {
		t.Fatalf("member that came up within lb_try_duration: %v", err)
	}
	l.Release()
	_ = l.Conn.Close()
}

func TestStateSurvivesReload(t *testing.T) {
	to := listeners(t, 1)
	old := provisioned(t, &Farm{To: to})
	l := pick(t, old, nil)
	fresh := provisioned(t, &Farm{To: to}) // the next config generation
	_ = old.Cleanup()
	if n := fresh.member(to[0], memberOpts{}).Active(); n != 1 {
		t.Fatalf("after reload the member counts %d live connections, want 1", n)
	}
	l.Release()
	if n := fresh.member(to[0], memberOpts{}).Active(); n != 0 {
		t.Fatalf("release after reload: %d", n)
	}
}

func TestDNSMembers(t *testing.T) {
	dns := e2e.StartDNS(t)
	dns.Set("brokers.prelude.test", "127.0.0.6", "127.0.0.7", "::1")
	f := provisioned(t, &Farm{To: []string{"brokers.prelude.test:5672", "127.0.0.1:5672"},
		Resolver: dns.Addr, DNSRefresh: caddy.Duration(time.Hour)})
	ms, errs := f.Members(context.Background())
	want := []string{"[::1]:5672", "127.0.0.6:5672", "127.0.0.7:5672", "127.0.0.1:5672"}
	if len(errs) != 0 || !sameSet(addrs(ms), want) {
		t.Fatalf("members %v (%v), want %v", addrs(ms), errs, want)
	}
	// Answers are cached for dns_refresh, then re-resolved.
	dns.Set("brokers.prelude.test", "127.0.0.8")
	ms, _ = f.Members(context.Background())
	if len(ms) != 4 {
		t.Fatalf("re-resolved before dns_refresh: %v", addrs(ms))
	}
	f.DNSRefresh = caddy.Duration(time.Nanosecond)
	ms, _ = f.Members(context.Background())
	if !sameSet(addrs(ms), []string{"127.0.0.8:5672", "127.0.0.1:5672"}) {
		t.Fatalf("after refresh: %v", addrs(ms))
	}
	// A failing lookup keeps the last answers.
	dns.Remove("brokers.prelude.test")
	ms, _ = f.Members(context.Background())
	if !sameSet(addrs(ms), []string{"127.0.0.8:5672", "127.0.0.1:5672"}) {
		t.Fatalf("after NXDOMAIN: %v", addrs(ms))
	}
	// An unknown name gives no members and a reason.
	g := provisioned(t, &Farm{To: []string{"nowhere.prelude.test:5672"}, Resolver: dns.Addr})
	_, err := g.Dial(context.Background(), nil, accept)
	if err == nil || !strings.Contains(err.Error(), "nowhere.prelude.test") {
		t.Fatalf("unknown name: %v", err)
	}
}

func sameSet(a, b []string) bool {
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return len(a) == len(b)
}

func TestValidate(t *testing.T) {
	cases := map[string]*Farm{
		"to: at least one":    &Farm{},
		"is not host:port":    &Farm{To: []string{"rabbit"}},
		"is not srv+_service": &Farm{To: []string{"srv+amqp.example"}},
		"proxy_protocol":      &Farm{To: []string{"a:1"}, ProxyProtocol: "v3"},
		"lb_policy: unknown":  &Farm{To: []string{"a:1"}, LBPolicy: "fastest"},
		"max_connections":     &Farm{To: []string{"a:1"}, MaxConnections: -1},
		"resolver":            &Farm{To: []string{"a:1"}, Resolver: "1.1.1.1"},
	}
	for want, f := range cases {
		if err := f.Validate(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: %v, want an error containing %q", f.To, err, want)
		}
	}
}

func TestDialStickyKeepsKeyAndFallsBack(t *testing.T) {
	to := listeners(t, 3)
	f := provisioned(t, &Farm{To: to, FailDuration: -1})
	pickFor := func(key string) string {
		l, err := f.DialSticky(context.Background(), nil, key, accept)
		if err != nil {
			t.Fatal(err)
		}
		l.Release()
		_ = l.Conn.Close()
		return l.Member.Addr
	}
	first := pickFor("client-7")
	for i := 0; i < 5; i++ {
		if got := pickFor("client-7"); got != first {
			t.Fatalf("sticky key moved from %s to %s", first, got)
		}
	}
	// The sticky member refuses: the next member in order takes over, and
	// the same one every time.
	fallback := ""
	_, err := f.DialSticky(context.Background(), nil, "client-7", func(_ context.Context, m *Member, _ net.Conn) error {
		if m.Addr == first {
			return errors.New("gone")
		}
		fallback = m.Addr
		return nil
	})
	if err != nil || fallback == "" || fallback == first {
		t.Fatalf("fallback %q, %v", fallback, err)
	}
}

// TestExpandAddressShowsOnlyClientValues: a refused expansion names the
// template and the client's own bad value, never an operator's value (an
// internal host, say) or the expanded address.
func TestExpandAddressShowsOnlyClientValues(t *testing.T) {
	t.Setenv("PRELUDE_TEST_INTERNAL", "db.internal:5432")
	repl := caddy.NewReplacer()
	repl.Set("l4.git.owner", "bad@x")
	ctx := WithReplacer(context.Background(), repl)
	for tmpl, want := range map[string]string{
		"{l4.git.owner}:9418":         `placeholder {l4.git.owner} is "bad@x", with '@'`,
		"{env.PRELUDE_TEST_INTERNAL}": `placeholder {env.PRELUDE_TEST_INTERNAL} has a value with ':'`,
		"{l4.git.missing}:9418":       `placeholder {l4.git.missing} is empty`,
		"host{l4.git.owner}":          `is "bad@x"`,
	} {
		_, err := expandAddress(ctx, tmpl)
		var nr *NoRouteError
		if !errors.As(err, &nr) || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "db.internal") {
			t.Errorf("%s: %v, want a NoRouteError with %q and no internal value", tmpl, err, want)
		}
	}
	repl.Set("l4.git.owner", "alice")
	t.Setenv("PRELUDE_TEST_INTERNAL", "db.internal")
	if _, err := expandAddress(ctx, "{env.PRELUDE_TEST_INTERNAL}"); err == nil || strings.Contains(err.Error(), "db.internal") {
		t.Errorf("an expansion without a port: %v, want a refusal that does not show it", err)
	}
	if addr, err := expandAddress(ctx, "{l4.git.owner}.git.internal:9418"); err != nil || addr != "alice.git.internal:9418" {
		t.Errorf("good expansion: %q, %v", addr, err)
	}
}

// TestFailedMemberIsNotHealthy: a member sitting out after a failure is
// listed, and exported, as not healthy, never healthy beside failed.
func TestFailedMemberIsNotHealthy(t *testing.T) {
	dead := e2e.FreePort(t)
	f := provisioned(t, &Farm{Name: "failed-not-healthy", To: []string{dead}, FailDuration: caddy.Duration(time.Minute)})
	if _, err := f.Dial(context.Background(), nil, func(context.Context, *Member, net.Conn) error { return nil }); err == nil {
		t.Fatal("a dial to a closed port succeeded")
	}
	st := farmStatus(t, f.Name)
	if len(st.Members) != 1 || !st.Members[0].Failed || st.Members[0].Healthy {
		t.Fatalf("members after a failure: %+v, want failed and not healthy", st.Members)
	}
	reg := prometheus.NewRegistry()
	mustRegister(t, reg, memberCollector{})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "caddy_layer4_farm_member_healthy" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == dead && m.GetGauge().GetValue() != 0 {
				t.Fatalf("caddy_layer4_farm_member_healthy{member=%q} = %v, want 0", dead, m.GetGauge().GetValue())
			}
		}
	}
}

func mustRegister(t *testing.T, reg *prometheus.Registry, c prometheus.Collector) {
	t.Helper()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
}
