package bench

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4foo"
)

// BenchmarkFooMessages measures Foo messages per second (requests plus
// answers, pipelined) with 1 and 50 concurrent connections, direct to the
// server, through the analysing foo handler and through caddy-l4's proxy,
// one path after the other in every iteration. Two servers: "batched"
// answers all it has read with one write, "flush-each" writes every answer
// on its own (many small segments: the proxy's per-read cost dominates).
// With PRELUDE_BENCH_HAPROXY set, HAProxy in TCP mode is a fourth path.
func BenchmarkFooMessages(b *testing.B) {
	servers := []struct {
		name     string
		opts     footest.ServerOptions
		requests int // per path and iteration: long enough to measure
	}{
		{"batched", footest.ServerOptions{}, 1000000},
		{"flush-each", footest.ServerOptions{FlushEach: true}, 100000},
	}
	for _, server := range servers {
		for _, conns := range []int{1, 50} {
			b.Run(fmt.Sprintf("server=%s/conns=%d", server.name, conns), func(b *testing.B) {
				benchFoo(b, server.opts, conns, server.requests)
			})
		}
	}
}

func benchFoo(b *testing.B, opts footest.ServerOptions, conns, requests int) {
	srv := footest.StartServer(b, opts)
	prelude, l4proxy := e2e.FreePort(b), e2e.FreePort(b)
	cfg := map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"prelude": map[string]any{"listen": []string{prelude}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"foo": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "foo", "to": []string{srv.Addr},
				"recovery": filepath.Join(b.TempDir(), "foo.json")}},
		}}},
		"l4proxy": map[string]any{"listen": []string{l4proxy}, "routes": []any{map[string]any{
			"handle": []any{map[string]any{"handler": "proxy",
				"upstreams": []any{map[string]any{"dial": []string{srv.Addr}}}}},
		}}},
	}}}}
	caddy := startBenchCaddy(b, cfg)
	p := paths{direct: srv.Addr, prelude: prelude, l4proxy: l4proxy}
	three := p.each()
	each := three[:]
	hp := startHAProxy(b, srv.Addr)
	if hp != nil {
		each = append(each, [2]string{"haproxy", hp.Addr})
	}
	allCPU := func() time.Duration { return totalCPU(caddy) + hp.CPUTime() }
	perConn := requests / conns
	msgs, took := map[string]int{}, map[string]time.Duration{}
	cpu, caddyCPU, hpCPU := map[string]time.Duration{}, map[string]time.Duration{}, map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, path := range each {
			cpu0, caddy0, hp0 := allCPU(), caddy.CPUTime(), hp.CPUTime()
			n, d, err := footest.Load(path[1], conns, perConn)
			cpu[path[0]] += allCPU() - cpu0
			caddyCPU[path[0]] += caddy.CPUTime() - caddy0
			hpCPU[path[0]] += hp.CPUTime() - hp0
			if err != nil {
				b.Fatalf("%s: %v", path[0], err)
			}
			msgs[path[0]] += n
			took[path[0]] += d
		}
	}
	b.StopTimer()
	rate := map[string]float64{}
	for name := range msgs {
		rate[name] = float64(msgs[name]) / took[name].Seconds()
		b.ReportMetric(rate[name], name+"-msg/s")
	}
	b.ReportMetric(rate["prelude"]/rate["direct"], "prelude/direct")
	b.ReportMetric(rate["l4proxy"]/rate["direct"], "l4proxy/direct")
	if hp != nil {
		b.ReportMetric(rate["haproxy"]/rate["direct"], "haproxy/direct")
	}
	for name := range msgs {
		b.ReportMetric(float64(cpu[name])/float64(msgs[name]), name+"-cpu-ns/msg")
		b.ReportMetric(cpu[name].Seconds()/took[name].Seconds(), name+"-cpus")
		switch {
		case name == "haproxy":
			b.ReportMetric(hpCPU[name].Seconds()/took[name].Seconds(), "haproxy-own-cpus")
		case caddy.Separate() && name != "direct":
			b.ReportMetric(caddyCPU[name].Seconds()/took[name].Seconds(), name+"-caddy-cpus")
		}
	}

}
