package l4zmtp_test

import (
	"bufio"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestMetrics: the layer4_zmtp series follow what happens to libzmq peers —
// a parked worker, a pair held open and ended, a client refused for its
// mechanism, a client no worker came for within pair_timeout.
func TestMetrics(t *testing.T) {
	requirePyZMQ(t)
	workersIn, poolFront, curveOnly := e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t)
	route := func(h map[string]any) []any {
		return []any{map[string]any{"match": []any{map[string]any{"zmtp": map[string]any{}}}, "handle": []any{h}}}
	}
	c := e2e.StartCaddy(t, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"workers": map[string]any{"listen": []string{workersIn}, "routes": route(map[string]any{"handler": "zmtp_workers", "pool": "m"})},
		"clients": map[string]any{"listen": []string{poolFront}, "routes": route(map[string]any{
			"handler": "zmtp", "workers": "m", "pair_timeout": "300ms"})},
		"curve": map[string]any{"listen": []string{curveOnly}, "routes": route(map[string]any{
			"handler": "zmtp", "to": []string{startWorker(t, "NULL")}, "mechanisms": []string{"CURVE"}})},
	}}}})

	// Counters outlive a test's Caddy: compare with their values now.
	const paired, refused, noWorker, held = `caddy_layer4_zmtp_pairings_total{result="paired"}`,
		`caddy_layer4_zmtp_pairings_total{result="mechanism_refused"}`,
		`caddy_layer4_zmtp_pairings_total{result="no_worker"}`, `caddy_layer4_zmtp_hold_seconds_count`
	before := map[string]float64{}
	for _, s := range []string{paired, refused, noWorker, held, `caddy_layer4_zmtp_hold_seconds_sum`} {
		before[s] = c.MetricValue(t, s)
	}
	// Pairs of other tests may still be ending: count from the value now.
	const active = `caddy_layer4_zmtp_pairs_active`
	pairs := c.MetricValue(t, active)
	startPoolWorker(t, workersIn, "NULL")
	c.WaitMetric(t, `caddy_layer4_zmtp_parked_workers{mechanism="NULL",pool="m"} 1`)

	hold := exec.Command(python, "testdata/peer.py", "holdclient", poolFront, "NULL", "4096")
	out, _ := hold.StdoutPipe()
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hold.Process.Kill(); _ = hold.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ok" {
		t.Fatalf("client through the pool: %q", line)
	}
	c.WaitMetric(t, fmt.Sprintf("%s %v", active, pairs+1))
	c.WaitMetric(t, `caddy_layer4_zmtp_parked_workers{mechanism="NULL",pool="m"} 0`)
	waitMetricAtLeast(t, c, paired, before[paired]+1)
	waitMetricAtLeast(t, c, held, before[held]+1)
	_ = hold.Process.Kill()
	_ = hold.Wait()
	c.WaitMetric(t, fmt.Sprintf("%s %v", active, pairs))
	// The worker's connection ended with its pair; libzmq reconnects it.
	c.WaitMetric(t, `caddy_layer4_zmtp_parked_workers{mechanism="NULL",pool="m"} 1`)

	// A refused or timed-out libzmq client reconnects until it gives up, and
	// each connection counts: at least one of each.
	if got := client(t, curveOnly, "NULL", "10"); got == "ok" {
		t.Fatal("a NULL client got through a CURVE-only route")
	}
	waitMetricAtLeast(t, c, refused, before[refused]+1)

	if got := client(t, poolFront, "PLAIN", "10"); got == "ok" {
		t.Fatal("a PLAIN client was paired with no PLAIN worker parked")
	}
	waitMetricAtLeast(t, c, noWorker, before[noWorker]+1)
	waitMetricAtLeast(t, c, held, before[held]+2)
	if v := c.MetricValue(t, `caddy_layer4_zmtp_hold_seconds_sum`) - before[`caddy_layer4_zmtp_hold_seconds_sum`]; v < 0.3 {
		t.Fatalf("hold time grew by %.3f s, want at least the 300ms pair_timeout", v)
	}
	if v := c.MetricValue(t, paired) - before[paired]; v != 1 {
		t.Fatalf("pairings paired grew by %v, want 1", v)
	}
}

// waitMetricAtLeast waits up to five seconds for series to reach min.
func waitMetricAtLeast(t *testing.T, c *e2e.Caddy, series string, min float64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); c.MetricValue(t, series) < min; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s stayed below %v", series, min)
		}
	}
}
