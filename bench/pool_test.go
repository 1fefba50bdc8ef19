package bench

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// poolPaths are the ways a client reaches RabbitMQ in the pooling
// benchmarks: direct, through a vhost block without a pool (a broker
// connection per client), and through one with a pool.
var poolPaths = []string{"direct", "unpooled", "pooled"}

// shortPaths add a pool with reuse_channels for the short-lived clients.
var shortPaths = []string{"direct", "unpooled", "pooled", "pooled-reuse"}

// startPoolCaddy serves the unpooled and pooled paths, both routing vhost
// "/" to RabbitMQ.
func startPoolCaddy(b *testing.B) (map[string]string, *e2e.Caddy) {
	addrs := map[string]string{"direct": e2e.RabbitAddr}
	servers := map[string]any{}
	for _, name := range []string{"unpooled", "pooled", "pooled-reuse"} {
		addrs[name] = e2e.FreePort(b)
		route := map[string]any{"vhosts": []string{"/"}, "to": []string{e2e.RabbitAddr}}
		switch name {
		case "pooled":
			route["pool"] = map[string]any{}
		case "pooled-reuse":
			route["pool"] = map[string]any{"reuse_channels": true}
		}
		h := map[string]any{"handler": "amqp", "name": name, "routes": []any{route}}
		if os.Getenv("PRELUDE_BENCH_STATS") == "off" { // to see what the session decoder costs
			h["stats"] = "off"
		}
		servers[name] = map[string]any{"listen": []string{addrs[name]}, "routes": []any{map[string]any{
			"match":  []any{map[string]any{"amqp": map[string]any{}}},
			"handle": []any{h}}}}
	}
	cfg := map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}}
	return addrs, startBenchCaddy(b, cfg)
}

// brokerCPU is RabbitMQ's CPU time so far (utime+stime of beam.smp).
func brokerCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(fields[11], 10, 64)
	st, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// rssOf is a process's resident memory (VmRSS), bytes.
func rssOf(pid int) uint64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseUint(strings.Fields(line)[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// shortCycle is a short-lived client: connect, open a channel, select
// confirms, publish one 16-byte message, wait for its confirm, close. The
// message goes to the default exchange with a routing key no queue has, so
// the broker confirms and drops it.
func shortCycle(url string) error {
	conn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := publishOne(conn, false); err != nil {
		return err
	}
	return conn.Close()
}

// cycles runs n short cycles on each of clients goroutines and returns the
// wall time and every cycle's duration.
func cycles(url string, clients, n int) (time.Duration, []time.Duration, error) {
	var mu sync.Mutex
	var all []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, n)
			for range n {
				t0 := time.Now()
				err := shortCycle(url)
				local = append(local, time.Since(t0))
				if err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
			}
			mu.Lock()
			all = append(all, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return time.Since(start), all, firstErr
}

// BenchmarkPoolShortLived measures the short-lived client (connect,
// channel, one 16-byte publish with a confirm, close), 1 and 32 clients at
// once, on each path in turn in every iteration: cycles per second, p50
// and p99 of one cycle, the broker's CPU per cycle (beam.smp's, from
// /proc) and the proxy's. Ratios are to direct, paired per iteration.
func BenchmarkPoolShortLived(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, caddy := startPoolCaddy(b)
	pid := brokerPID(b)
	type load struct {
		name       string
		clients, n int
	}
	loads := []load{{"1", 1, 200}, {"32", 32, 25}}
	rate := map[string][]float64{}
	p50, p99 := map[string][]float64{}, map[string][]float64{}
	broker := map[string]time.Duration{}
	proxy := map[string]*proxyCPU{}
	total := map[string]int{}
	for _, l := range loads {
		proxy[l.name] = newProxyCPU(caddy, nil)
	}
	// Warm the pools: a first connection's handshake is not the steady state.
	for _, p := range []string{"pooled", "pooled-reuse"} {
		if err := shortCycle(e2e.URL(addrs[p], "/")); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, l := range loads {
			for _, p := range benchPaths(shortPaths, addrs) {
				key := p + "-" + l.name
				var wall time.Duration
				var each []time.Duration
				var err error
				cpu0 := brokerCPU(pid)
				if err = proxy[l.name].measure(p, func() error {
					wall, each, err = cycles(e2e.URL(addrs[p], "/"), l.clients, l.n)
					return err
				}); err != nil {
					b.Fatalf("%s, %s clients: %v", p, l.name, err)
				}
				broker[key] += brokerCPU(pid) - cpu0
				total[key] += len(each)
				rate[key] = append(rate[key], float64(len(each))/wall.Seconds())
				p50[key] = append(p50[key], ms(quantile(each, 0.5)))
				p99[key] = append(p99[key], ms(quantile(each, 0.99)))
			}
		}
	}
	b.StopTimer()
	for _, l := range loads {
		for _, p := range benchPaths(shortPaths, addrs) {
			key := p + "-" + l.name
			b.ReportMetric(median(rate[key]), key+"-cycles/s")
			b.ReportMetric(median(p50[key]), key+"-p50-ms")
			b.ReportMetric(median(p99[key]), key+"-p99-ms")
			b.ReportMetric(float64(broker[key].Microseconds())/float64(total[key]), key+"-broker-cpu-us/cycle")
			if p != "direct" {
				b.ReportMetric(pairedRatio(rate[key], rate["direct-"+l.name]), key+"-rate/direct")
				b.ReportMetric(float64(broker[key])/float64(broker["direct-"+l.name]), key+"-broker-cpu/direct")
				b.ReportMetric(float64(proxy[l.name].of(p).Microseconds())/float64(total[key]), key+"-proxy-cpu-us/cycle")
			}
		}
	}
}

// BenchmarkPoolSteadyState measures a long-lived client through a pooled
// connection against the unpooled relay and direct: the round trip of a
// 16-byte message and the 16-byte rates from one publisher to one consumer
// and from two to two (the small-message yardstick's rows, small_test.go),
// with the proxy's CPU per message.
func BenchmarkPoolSteadyState(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, caddy := startPoolCaddy(b)
	const rtts, msgs = 200, 5000
	rtt, rate, rate2 := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	rttCPU, msgCPU, cpu2 := newProxyCPU(caddy, nil), newProxyCPU(caddy, nil), newProxyCPU(caddy, nil)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range poolPaths {
			url := e2e.URL(addrs[p], "/")
			var d time.Duration
			var err error
			if err = rttCPU.measure(p, func() error { d, err = smallPingPong(url, p, rtts); return err }); err != nil {
				b.Fatalf("%s ping-pong: %v", p, err)
			}
			rtt[p] = append(rtt[p], float64(d.Nanoseconds())/rtts/1000)
			if err = msgCPU.measure(p, func() error { d, err = oneToOne(url, p, msgs); return err }); err != nil {
				b.Fatalf("%s 1p1c: %v", p, err)
			}
			rate[p] = append(rate[p], msgs/d.Seconds())
			if err = cpu2.measure(p, func() error { d, err = twoToTwo(url, p, msgs/2); return err }); err != nil {
				b.Fatalf("%s 2p2c: %v", p, err)
			}
			rate2[p] = append(rate2[p], msgs/d.Seconds())
		}
	}
	b.StopTimer()
	per := func(d time.Duration, units int) float64 { return float64(d.Nanoseconds()) / float64(b.N*units) / 1000 }
	for _, p := range poolPaths {
		b.ReportMetric(median(rtt[p]), p+"-rtt-us")
		b.ReportMetric(median(rate[p]), p+"-msg/s")
		b.ReportMetric(median(rate2[p]), p+"-2p2c-msg/s")
		if p == "direct" {
			continue
		}
		b.ReportMetric(pairedRatio(rtt[p], rtt["direct"]), p+"-rtt/direct")
		b.ReportMetric(pairedRatio(rate[p], rate["direct"]), p+"-msg/s/direct")
		b.ReportMetric(per(rttCPU.of(p), rtts), p+"-proxy-cpu-us/rtt")
		b.ReportMetric(per(msgCPU.of(p), msgs), p+"-proxy-cpu-us/msg")
		b.ReportMetric(pairedRatio(rate2[p], rate2["direct"]), p+"-2p2c/direct")
		b.ReportMetric(per(cpu2.of(p), msgs), p+"-2p2c-proxy-cpu-us/msg")
	}
	b.ReportMetric(pairedRatio(rate2["pooled"], rate2["unpooled"]), "pooled/unpooled-2p2c-rate")
	b.ReportMetric(pairedRatio(rtt["pooled"], rtt["unpooled"]), "pooled/unpooled-rtt")
	b.ReportMetric(pairedRatio(rate["pooled"], rate["unpooled"]), "pooled/unpooled-rate")
}

// BenchmarkPoolManyClients holds PRELUDE_BENCH_POOL_CLIENTS (default 2000)
// clients with a channel each through the pool and reports the broker
// connections they hold (from rabbitmqctl) and the broker's RSS growth, and
// the same for unpooled clients up to what this broker's file descriptor
// limit allows (PRELUDE_BENCH_UNPOOLED_CLIENTS, default 500).
func BenchmarkPoolManyClients(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, _ := startPoolCaddy(b)
	pid := brokerPID(b)
	n := envInt("PRELUDE_BENCH_POOL_CLIENTS", 2000)
	unpooled := envInt("PRELUDE_BENCH_UNPOOLED_CLIENTS", 500)
	for i := 0; i < b.N; i++ {
		for _, run := range []struct {
			path    string
			clients int
		}{{"pooled", n}, {"unpooled", unpooled}} {
			before, conns0 := rssOf(pid), brokerConnections(b)
			held, took, err := holdClients(e2e.URL(addrs[run.path], "/"), run.clients)
			if err != nil {
				b.Fatalf("%s: %v", run.path, err)
			}
			time.Sleep(2 * time.Second) // the broker's memory settles
			conns, rss := brokerConnections(b)-conns0, rssOf(pid)
			for _, c := range held {
				_ = c.Close()
			}
			b.ReportMetric(float64(run.clients), run.path+"-clients")
			b.ReportMetric(float64(conns), run.path+"-broker-connections")
			b.ReportMetric(float64(int64(rss)-int64(before))/float64(run.clients)/1024, run.path+"-broker-KiB/client")
			b.ReportMetric(took.Seconds(), run.path+"-connect-all-s")
			time.Sleep(3 * time.Second)
		}
	}
}

// holdClients opens n clients (64 at a time) with a channel each.
func holdClients(url string, n int) ([]*amqp091.Connection, time.Duration, error) {
	out := make([]*amqp091.Connection, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := amqp091.Dial(url)
			if err == nil {
				_, err = c.Channel()
			}
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			out[i] = c
		}()
	}
	wg.Wait()
	took := time.Since(start)
	var held []*amqp091.Connection
	for _, c := range out {
		if c != nil {
			held = append(held, c)
		}
	}
	if firstErr != nil {
		for _, c := range held {
			_ = c.Close()
		}
	}
	return held, took, firstErr
}

func brokerConnections(b *testing.B) int {
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "pid").Output()
	if err != nil {
		b.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "<") {
			n++
		}
	}
	return n
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkPoolReconnect restarts RabbitMQ (rabbitmqctl stop_app,
// start_app) under PRELUDE_BENCH_POOL_CLIENTS clients through the pool and
// PRELUDE_BENCH_UNPOOLED_CLIENTS direct ones (this broker's file
// descriptor limit caps direct clients), each of which reconnects every
// 100 ms until it can publish a 16-byte message with a confirm again, and
// reports the time from start_app's return until every client has.
func BenchmarkPoolReconnect(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, _ := startPoolCaddy(b)
	for i := 0; i < b.N; i++ {
		for _, run := range []struct {
			path    string
			clients int
		}{{"pooled", envInt("PRELUDE_BENCH_POOL_CLIENTS", 2000)}, {"direct", envInt("PRELUDE_BENCH_UNPOOLED_CLIENTS", 500)}} {
			took, err := reconnectAll(e2e.URL(addrs[run.path], "/"), run.clients)
			if err != nil {
				b.Fatalf("%s: %v", run.path, err)
			}
			b.ReportMetric(float64(run.clients), run.path+"-clients")
			b.ReportMetric(took.Seconds(), run.path+"-all-publish-again-s")
		}
	}
}

// reconnectAll connects n clients, restarts the broker and returns how
// long after its start every client had published again.
func reconnectAll(url string, n int) (time.Duration, error) {
	var up sync.WaitGroup
	var again sync.WaitGroup
	stop := make(chan struct{})
	defer close(stop)
	restarted := make(chan struct{})
	up.Add(n)
	again.Add(n)
	for range n {
		go func() {
			first := true
			for {
				select {
				case <-stop:
					return
				default:
				}
				conn, err := amqp091.Dial(url)
				if err == nil {
					err = publishOne(conn, true)
				}
				if err != nil {
					if conn != nil {
						_ = conn.Close()
					}
					time.Sleep(100 * time.Millisecond)
					continue
				}
				if first {
					first = false
					up.Done()
				} else {
					again.Done()
					<-stop
					_ = conn.Close()
					return
				}
				closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
				select {
				case <-closed:
				case <-stop:
					_ = conn.Close()
					return
				}
				<-restarted
			}
		}()
	}
	up.Wait()
	if out, err := exec.Command("rabbitmqctl", "stop_app").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("stop_app: %v %s", err, out)
	}
	if out, err := exec.Command("rabbitmqctl", "start_app").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("start_app: %v %s", err, out)
	}
	start := time.Now()
	close(restarted)
	done := make(chan struct{})
	go func() { again.Wait(); close(done) }()
	select {
	case <-done:
		return time.Since(start), nil
	case <-time.After(5 * time.Minute):
		return 0, fmt.Errorf("not every client published again within 5 minutes")
	}
}

// publishOne opens a channel, selects confirms and publishes one 16-byte
// message with its confirm; with closeChannel it then closes the channel.
func publishOne(conn *amqp091.Connection, closeChannel bool) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Confirm(false); err != nil {
		return err
	}
	dc, err := ch.PublishWithDeferredConfirm("", "prelude-bench-void", false, false, amqp091.Publishing{Body: make([]byte, 16)})
	if err != nil {
		return err
	}
	if !dc.Wait() {
		return fmt.Errorf("publish nacked")
	}
	if closeChannel {
		return ch.Close()
	}
	return nil
}

// BenchmarkIdleSessions holds PRELUDE_BENCH_IDLE_SESSIONS (default 500)
// idle AMQP clients, each with a channel open, through each proxied path in
// turn and reports the proxy's resident memory per session (RSS growth of
// a Caddy of its own: run pinned, PRELUDE_BENCH_CADDY set), and HAProxy's
// where PRELUDE_BENCH_HAPROXY names it. Only the first iteration measures
// (memory freed by closed sessions stays in the process); use -count for
// more samples, each with processes of its own.
func BenchmarkIdleSessions(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs, caddy := startPoolCaddy(b)
	if !caddy.Separate() {
		b.Skip("needs PRELUDE_BENCH_CADDY: the memory of a Caddy in this process cannot be told apart")
	}
	hp := startHAProxy(b, e2e.RabbitAddr)
	n := envInt("PRELUDE_BENCH_IDLE_SESSIONS", 500)
	paths := []string{"unpooled", "pooled"}
	if hp != nil {
		addrs["haproxy"] = hp.Addr
		paths = append(paths, "haproxy")
	}
	for i := 0; i < b.N; i++ {
		if i > 0 {
			continue // a process's RSS does not shrink when sessions end: only the first round measures growth
		}
		for _, p := range paths {
			rss := caddy.RSS
			if p == "haproxy" {
				rss = hp.RSS
			}
			before := rss()
			held, _, err := holdClients(e2e.URL(addrs[p], "/"), n)
			if err != nil {
				b.Fatalf("%s: %v", p, err)
			}
			time.Sleep(2 * time.Second)
			after := rss()
			for _, c := range held {
				_ = c.Close()
			}
			b.ReportMetric(float64(int64(after)-int64(before))/float64(n)/1024, p+"-KiB/idle-session")
			time.Sleep(2 * time.Second)
		}
	}
}
