package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// smallPaths are the ways a 16-byte message reaches RabbitMQ in
// BenchmarkSmallMessages: direct; Prelude with statistics on (the default)
// and off; Prelude relaying with a goroutine per direction instead of its
// event loops (statistics on); Prelude with a capture selecting the session, NDJSON and pcapng,
// bodies kept; caddy-l4's proxy; and HAProxy in TCP mode when
// PRELUDE_BENCH_HAPROXY names its binary.
var smallPaths = []string{"direct", "prelude-nostats", "prelude", "prelude-goroutines", "capture-ndjson", "capture-pcapng", "l4proxy", "haproxy"}

// startSmallCaddy serves one listener per path but direct. The capture
// paths' clients name their connection after the path, which is what the
// two captures (configured on the stats-on handler) select.
func startSmallCaddy(b *testing.B) (map[string]string, *e2e.Caddy) {
	addrs := map[string]string{"direct": e2e.RabbitAddr}
	servers := map[string]any{}
	dir := b.TempDir()
	amqpServer := func(name string, h map[string]any) {
		addrs[name] = e2e.FreePort(b)
		h["handler"] = "amqp"
		h["default"] = map[string]any{"to": []string{e2e.RabbitAddr}}
		h["name"] = name
		servers[name] = map[string]any{"listen": []string{addrs[name]}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"amqp": map[string]any{}}}, "handle": []any{h}}}}
	}
	amqpServer("prelude", map[string]any{"captures": []any{
		map[string]any{"file": filepath.Join(dir, "bench.ndjson"), "format": "ndjson", "filter": map[string]any{"connection_name": "capture-ndjson"}},
		map[string]any{"file": filepath.Join(dir, "bench.pcapng"), "format": "pcapng", "filter": map[string]any{"connection_name": "capture-pcapng"}},
	}})
	amqpServer("prelude-nostats", map[string]any{"stats": "off"})
	amqpServer("prelude-goroutines", map[string]any{"relay": "goroutines"})
	addrs["capture-ndjson"], addrs["capture-pcapng"] = addrs["prelude"], addrs["prelude"]
	addrs["l4proxy"] = e2e.FreePort(b)
	servers["l4proxy"] = map[string]any{"listen": []string{addrs["l4proxy"]}, "routes": []any{map[string]any{
		"handle": []any{map[string]any{"handler": "proxy", "upstreams": []any{map[string]any{"dial": []string{e2e.RabbitAddr}}}}}}}}
	cfg := map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}}
	return addrs, startBenchCaddy(b, cfg)
}

// proxyCPU measures the CPU a path's proxy spends: HAProxy's process, a
// Caddy running as its own process, or, for a Caddy in this process, this
// process's CPU less what the direct path cost it for the same work.
type proxyCPU struct {
	caddy *e2e.Caddy
	hp    *haproxy
	self  map[string]time.Duration // this process's CPU per path, summed
	proc  map[string]time.Duration // the proxy process's CPU per path, summed
}

func newProxyCPU(caddy *e2e.Caddy, hp *haproxy) *proxyCPU {
	return &proxyCPU{caddy: caddy, hp: hp, self: map[string]time.Duration{}, proc: map[string]time.Duration{}}
}

// measure runs f and adds the CPU it cost to path's sums.
func (c *proxyCPU) measure(path string, f func() error) error {
	self0, proc0 := selfCPU(), c.process(path)
	err := f()
	c.self[path] += selfCPU() - self0
	c.proc[path] += c.process(path) - proc0
	return err
}

func (c *proxyCPU) process(path string) time.Duration {
	switch {
	case path == "direct":
		return 0
	case path == "haproxy":
		return c.hp.CPUTime()
	case c.caddy.Separate():
		return c.caddy.CPUTime()
	}
	return 0
}

// of is the proxy's CPU on path, summed over what measure ran.
func (c *proxyCPU) of(path string) time.Duration {
	if path == "haproxy" || (path != "direct" && c.caddy.Separate()) {
		return c.proc[path]
	}
	return c.self[path] - c.self["direct"]
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSmallMessages measures, on every path in turn in each
// iteration: the round trip of a 16-byte message (publish, delivered to a
// consumer on the same connection); the delivered rate of 16-byte messages
// from one publisher connection to one consumer connection (1p1c) and from
// two to two at the same time (2p2c); and connection setup (connect, open a
// channel, close). Each row reports the proxy's own CPU per unit: HAProxy's
// or a separate Caddy's process CPU, or, for a Caddy in this process, this
// process's CPU less the direct path's. Rates and round trips are medians
// over the iterations; ratios to direct are medians of each iteration's
// ratio (the paths ran one right after the other, so drift cancels out).
func BenchmarkSmallMessages(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, caddy := startSmallCaddy(b)
	hp := startHAProxy(b, e2e.RabbitAddr)
	if hp != nil {
		addrs["haproxy"] = hp.Addr
	}
	paths := benchPaths(smallPaths, addrs)
	const rtts, msgs, setups = 200, 5000, 20
	rtt, rate, rate2, setup := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	rttCPU, cpu1, cpu2, setupCPU := newProxyCPU(caddy, hp), newProxyCPU(caddy, hp), newProxyCPU(caddy, hp), newProxyCPU(caddy, hp)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			url := e2e.URL(addrs[p], "/")
			var d time.Duration
			var err error
			if err = rttCPU.measure(p, func() error { d, err = smallPingPong(url, p, rtts); return err }); err != nil {
				b.Fatalf("%s ping-pong: %v", p, err)
			}
			rtt[p] = append(rtt[p], float64(d.Nanoseconds())/rtts/1000)
			if err = cpu1.measure(p, func() error { d, err = oneToOne(url, p, msgs); return err }); err != nil {
				b.Fatalf("%s 1p1c: %v", p, err)
			}
			rate[p] = append(rate[p], msgs/d.Seconds())
			if err = cpu2.measure(p, func() error { d, err = twoToTwo(url, p, msgs/2); return err }); err != nil {
				b.Fatalf("%s 2p2c: %v", p, err)
			}
			rate2[p] = append(rate2[p], msgs/d.Seconds())
			if err = setupCPU.measure(p, func() error { d, err = connectChannelClose(url, p, setups); return err }); err != nil {
				b.Fatalf("%s setup: %v", p, err)
			}
			setup[p] = append(setup[p], float64(d.Nanoseconds())/setups/1000)
		}
	}
	b.StopTimer()
	per := func(d time.Duration, units int) float64 { return float64(d.Nanoseconds()) / float64(b.N*units) / 1000 }
	for _, p := range paths {
		b.ReportMetric(median(rtt[p]), p+"-rtt-us")
		b.ReportMetric(median(rate[p]), p+"-msg/s")
		b.ReportMetric(median(rate2[p]), p+"-2p2c-msg/s")
		b.ReportMetric(median(setup[p]), p+"-setup-us")
		if p == "direct" {
			continue
		}
		b.ReportMetric(pairedRatio(rtt[p], rtt["direct"]), p+"-rtt/direct")
		b.ReportMetric(pairedRatio(rate[p], rate["direct"]), p+"-msg/s/direct")
		b.ReportMetric(pairedRatio(rate2[p], rate2["direct"]), p+"-2p2c/direct")
		b.ReportMetric(pairedRatio(setup[p], setup["direct"]), p+"-setup/direct")
		b.ReportMetric(per(rttCPU.of(p), rtts), p+"-proxy-cpu-us/rtt")
		b.ReportMetric(per(cpu1.of(p), msgs), p+"-proxy-cpu-us/msg")
		b.ReportMetric(per(cpu2.of(p), msgs), p+"-2p2c-proxy-cpu-us/msg")
		b.ReportMetric(per(setupCPU.of(p), setups), p+"-proxy-cpu-us/setup")
	}
	b.ReportMetric(pairedRatio(rate["prelude"], rate["prelude-nostats"]), "stats-on/off-rate")
	b.ReportMetric(pairedRatio(rate2["prelude"], rate2["prelude-nostats"]), "stats-on/off-2p2c-rate")
	b.ReportMetric(pairedRatio(rtt["prelude"], rtt["prelude-nostats"]), "stats-on/off-rtt")
	b.ReportMetric(pairedRatio(rate["prelude"], rate["prelude-goroutines"]), "loop/goroutines-rate")
	b.ReportMetric(pairedRatio(rate2["prelude"], rate2["prelude-goroutines"]), "loop/goroutines-2p2c-rate")
	b.ReportMetric(pairedRatio(rtt["prelude"], rtt["prelude-goroutines"]), "loop/goroutines-rtt")
	b.ReportMetric(pairedRatio(rate["capture-ndjson"], rate["prelude"]), "ndjson/capture-off-rate")
	b.ReportMetric(pairedRatio(rate["capture-pcapng"], rate["prelude"]), "pcapng/capture-off-rate")
}

// benchPaths is the paths that have an address, or, when
// PRELUDE_BENCH_PATHS lists some (comma-separated, for profiling one path),
// those of them; direct always comes first, the baseline of every ratio.
func benchPaths(all []string, addrs map[string]string) []string {
	var only map[string]bool
	if list := os.Getenv("PRELUDE_BENCH_PATHS"); list != "" {
		only = map[string]bool{"direct": true}
		for _, p := range strings.Split(list, ",") {
			only[p] = true
		}
	}
	var out []string
	for _, p := range all {
		if addrs[p] != "" && (only == nil || only[p]) {
			out = append(out, p)
		}
	}
	return out
}

// connectChannelClose returns the time n connections took to open, open a
// channel and close, one after the other.
func connectChannelClose(url, name string, n int) (time.Duration, error) {
	start := time.Now()
	for range n {
		conn, err := dialNamed(url, name)
		if err != nil {
			return 0, err
		}
		if _, err := conn.Channel(); err != nil {
			return 0, err
		}
		if err := conn.Close(); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

// pairedRatio is the median of a[i]/b[i].
func pairedRatio(a, b []float64) float64 {
	r := make([]float64, min(len(a), len(b)))
	for i := range r {
		r[i] = a[i] / b[i]
	}
	return median(r)
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func dialNamed(url, name string) (*amqp091.Connection, error) {
	return amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": name}})
}

// smallPingPong returns the time n round trips of a 16-byte message took.
func smallPingPong(url, name string, n int) (time.Duration, error) {
	conn, err := dialNamed(url, name)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return 0, err
	}
	deliveries, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	if err != nil {
		return 0, err
	}
	body := make([]byte, 16)
	start := time.Now()
	for i := 0; i < n; i++ {
		if err := ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: body}); err != nil {
			return 0, err
		}
		if _, ok := <-deliveries; !ok {
			return 0, fmt.Errorf("deliveries closed after %d", i)
		}
	}
	return time.Since(start), nil
}

// oneToOne returns the time n 16-byte messages took from a publisher
// connection to a consumer connection (auto-ack, prefetch unlimited).
func oneToOne(url, name string, n int) (time.Duration, error) {
	return oneToOneSized(url, name, n, 16)
}

// twoToTwo returns the time it took two publisher-consumer pairs, each on
// connections and a queue of its own, to move n 16-byte messages each at
// the same time.
func twoToTwo(url, name string, n int) (time.Duration, error) {
	start := time.Now()
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := oneToOneSized(url, name, n, 16)
			errs <- err
		}()
	}
	err := errors.Join(<-errs, <-errs)
	return time.Since(start), err
}

// BenchmarkStatsCost is BenchmarkSmallMessages for the two paths it
// compares most closely, statistics on and off, alternated A-B-B-A within
// each iteration so that drift cancels out: 16-byte round trips and 1p1c
// rate, reported as the median of the iterations' on/off ratios. With
// PRELUDE_BENCH_BASELINE_CADDY naming a Caddy built from an earlier commit
// (run as its own process, on PRELUDE_BENCH_CADDY_CPUS), statistics on are
// also compared with that build's amqp handler the same way.
func BenchmarkStatsCost(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, _ := startSmallCaddy(b)
	pairs := [][2]string{{"prelude", "prelude-nostats"}}
	if bin := os.Getenv("PRELUDE_BENCH_BASELINE_CADDY"); bin != "" {
		addrs["baseline"] = e2e.FreePort(b)
		e2e.StartCaddyProcess(b, bin, os.Getenv("PRELUDE_BENCH_CADDY_CPUS"), e2e.Layer4(addrs["baseline"], map[string]any{
			"match":  []any{map[string]any{"amqp": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{e2e.RabbitAddr}}}},
		}))
		pairs = append(pairs, [2]string{"prelude", "baseline"})
	}
	const rtts, msgs = 200, 5000
	rttRatio, rateRatio := map[string][]float64{}, map[string][]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, pair := range pairs {
			rtt, rate := map[string]float64{}, map[string]float64{}
			for _, p := range []string{pair[0], pair[1], pair[1], pair[0]} {
				url := e2e.URL(addrs[p], "/")
				d, err := smallPingPong(url, p, rtts)
				if err != nil {
					b.Fatalf("%s ping-pong: %v", p, err)
				}
				rtt[p] += d.Seconds()
				d, err = oneToOne(url, p, msgs)
				if err != nil {
					b.Fatalf("%s 1p1c: %v", p, err)
				}
				rate[p] += msgs / d.Seconds()
			}
			key := pair[0] + "/" + pair[1]
			rttRatio[key] = append(rttRatio[key], rtt[pair[0]]/rtt[pair[1]])
			rateRatio[key] = append(rateRatio[key], rate[pair[0]]/rate[pair[1]])
		}
	}
	b.StopTimer()
	names := map[string]string{"prelude/prelude-nostats": "stats-on/off", "prelude/baseline": "stats-on/baseline"}
	for key, name := range names {
		if len(rttRatio[key]) > 0 {
			b.ReportMetric(median(rttRatio[key]), name+"-rtt")
			b.ReportMetric(median(rateRatio[key]), name+"-rate")
		}
	}
}
