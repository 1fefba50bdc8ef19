package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// smallPaths are the ways a 16-byte message reaches RabbitMQ in
// BenchmarkSmallMessages: direct; Prelude with statistics on (the default)
// and off; Prelude with a capture selecting the session, NDJSON and pcapng,
// bodies kept; caddy-l4's proxy.
var smallPaths = []string{"direct", "prelude-nostats", "prelude", "capture-ndjson", "capture-pcapng", "l4proxy"}

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
	addrs["capture-ndjson"], addrs["capture-pcapng"] = addrs["prelude"], addrs["prelude"]
	addrs["l4proxy"] = e2e.FreePort(b)
	servers["l4proxy"] = map[string]any{"listen": []string{addrs["l4proxy"]}, "routes": []any{map[string]any{
		"handle": []any{map[string]any{"handler": "proxy", "upstreams": []any{map[string]any{"dial": []string{e2e.RabbitAddr}}}}}}}}
	cfg := map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}}
	return addrs, startBenchCaddy(b, cfg)
}

// BenchmarkSmallMessages measures, on every path in turn in each
// iteration: the round trip of a 16-byte message (publish, delivered to a
// consumer on the same connection), the delivered rate of 16-byte messages
// from one publisher connection to one consumer connection (1p1c) and from
// two to two at the same time (2p2c, CPU not counted), with
// the CPU per delivered message of everything this process and a separate
// Caddy run (RabbitMQ excluded), and that less the direct path's: the
// proxy's own. Rates and round trips are medians over the iterations.
func BenchmarkSmallMessages(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, caddy := startSmallCaddy(b)
	const rtts, msgs = 200, 5000
	rtt, rate, rate2, cpu := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}, map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range smallPaths {
			url := e2e.URL(addrs[p], "/")
			d, err := smallPingPong(url, p, rtts)
			if err != nil {
				b.Fatalf("%s ping-pong: %v", p, err)
			}
			rtt[p] = append(rtt[p], float64(d.Nanoseconds())/rtts/1000)
			cpu0 := totalCPU(caddy)
			d, err = oneToOne(url, p, msgs)
			if err != nil {
				b.Fatalf("%s 1p1c: %v", p, err)
			}
			rate[p] = append(rate[p], msgs/d.Seconds())
			cpu[p] += totalCPU(caddy) - cpu0
			if d, err = twoToTwo(url, p, msgs/2); err != nil {
				b.Fatalf("%s 2p2c: %v", p, err)
			}
			rate2[p] = append(rate2[p], msgs/d.Seconds())
		}
	}
	b.StopTimer()
	med := func(m map[string][]float64, p string) float64 { return median(m[p]) }
	for _, p := range smallPaths {
		b.ReportMetric(med(rtt, p), p+"-rtt-us")
		b.ReportMetric(med(rate, p), p+"-msg/s")
		b.ReportMetric(med(rate2, p), p+"-2p2c-msg/s")
		perMsg := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N*msgs) / 1000 }
		b.ReportMetric(perMsg(cpu[p]), p+"-cpu-us/msg")
		if p != "direct" {
			b.ReportMetric(perMsg(cpu[p]-cpu["direct"]), p+"-proxy-cpu-us/msg")
			b.ReportMetric(med(rate, p)/med(rate, "direct"), p+"/direct")
		}
	}
	// Ratios are medians of each iteration's ratio: the two paths ran one
	// right after the other, so the machine's drift cancels out.
	b.ReportMetric(pairedRatio(rate["prelude"], rate["prelude-nostats"]), "stats-on/off-rate")
	b.ReportMetric(pairedRatio(rate2["prelude"], rate2["prelude-nostats"]), "stats-on/off-2p2c-rate")
	b.ReportMetric(pairedRatio(rtt["prelude"], rtt["prelude-nostats"]), "stats-on/off-rtt")
	b.ReportMetric(pairedRatio(rate["capture-ndjson"], rate["prelude"]), "ndjson/capture-off-rate")
	b.ReportMetric(pairedRatio(rate["capture-pcapng"], rate["prelude"]), "pcapng/capture-off-rate")
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
