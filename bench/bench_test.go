// Package bench compares, side by side in one process run, a direct
// connection with one through Caddy Prelude's amqp handler and one through
// caddy-l4's own proxy handler. Run it with `make bench`; BENCHMARKS.md
// records the figures.
package bench

import (
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4amqp"
)

// streamBytes is what the streaming broker sends after the handshake, per
// connection.
const streamBytes = 64 << 20

// paths are the three ways to reach a broker, in the order measured.
type paths struct {
	direct, prelude, l4proxy string
}

func (p paths) each() [3][2]string {
	return [3][2]string{{"direct", p.direct}, {"prelude", p.prelude}, {"l4proxy", p.l4proxy}}
}

// startCaddy serves, on three ports: prelude routing every vhost to target,
// and caddy-l4's proxy forwarding to target.
func startCaddy(b *testing.B, target string) (paths, *e2e.Caddy) {
	prelude, l4proxy := e2e.FreePort(b), e2e.FreePort(b)
	cfg := map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"prelude": map[string]any{"listen": []string{prelude}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"amqp": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "amqp",
				"default": map[string]any{"to": []string{target}}}},
		}}},
		"l4proxy": map[string]any{"listen": []string{l4proxy}, "routes": []any{map[string]any{
			"handle": []any{map[string]any{"handler": "proxy",
				"upstreams": []any{map[string]any{"dial": []string{target}}}}},
		}}},
	}}}}
	return paths{direct: target, prelude: prelude, l4proxy: l4proxy}, startBenchCaddy(b, cfg)
}

// Benchmarks run Caddy at its default log level, as operators do: the
// tests' DEBUG level writes lines per session that cost connection setup
// about 7% of the proxy's CPU (BENCHMARKS.md, "connection setup").
func init() { e2e.LogLevel = "INFO" }

// startBenchCaddy starts Caddy with cfg: in process, or, when
// PRELUDE_BENCH_CADDY names a binary, as its own process pinned to
// PRELUDE_BENCH_CADDY_CPUS (the Makefile's pinned layout).
func startBenchCaddy(b *testing.B, cfg map[string]any) *e2e.Caddy {
	if bin := os.Getenv("PRELUDE_BENCH_CADDY"); bin != "" {
		return e2e.StartCaddyProcess(b, bin, os.Getenv("PRELUDE_BENCH_CADDY_CPUS"), cfg)
	}
	c := e2e.StartCaddy(b, cfg)
	c.NoLeak(e2e.TestPassword)
	return c
}

// BenchmarkConnectionSetup times amqp091.Dial (header to Open-Ok) against
// the real RabbitMQ on each path, one path after the other in every
// iteration, and reports the median and p99 of each and the ratios to direct.
func BenchmarkConnectionSetup(b *testing.B) {
	e2e.RequireRabbit(b)
	p, _ := startCaddy(b, e2e.RabbitAddr)
	samples := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, path := range p.each() {
			start := time.Now()
			c, err := amqp091.Dial(e2e.URL(path[1], e2e.VhostA))
			took := time.Since(start)
			if err != nil {
				b.Fatalf("%s: %v", path[0], err)
			}
			samples[path[0]] = append(samples[path[0]], took)
			b.StopTimer()
			_ = c.Close()
			b.StartTimer()
		}
	}
	b.StopTimer()
	med := map[string]float64{}
	for name, s := range samples {
		med[name] = ms(quantile(s, 0.5))
		b.ReportMetric(med[name], name+"-median-ms")
		b.ReportMetric(ms(quantile(s, 0.99)), name+"-p99-ms")
	}
	b.ReportMetric(med["prelude"]/med["direct"], "prelude/direct-median")
	b.ReportMetric(med["l4proxy"]/med["direct"], "l4proxy/direct-median")
}

// BenchmarkRelayThroughput streams 64 MiB after the handshake from a
// broker that completes the handshake and then only sends bytes, on each
// path in every iteration, and reports MB/s per path and the ratios.
func BenchmarkRelayThroughput(b *testing.B) {
	e2e.RequireRabbit(b) // for the test user; the stream itself needs no RabbitMQ
	p, caddy := startCaddy(b, startStreamingBroker(b))
	readBuf := make([]byte, 256<<10)
	timePaths(b, p, caddy, func(c net.Conn) error {
		n, err := io.CopyBuffer(discard{}, onlyReader{c}, readBuf)
		if err == nil && n != streamBytes {
			err = fmt.Errorf("relayed %d of %d bytes", n, streamBytes)
		}
		return err
	})
}

// BenchmarkPublishThroughput is BenchmarkRelayThroughput the other way:
// after the handshake the client sends 64 MiB of body frames, and a broker
// that reads them all answers one byte; MB/s per path (until that byte
// arrives) and Caddy's CPU per GB.
func BenchmarkPublishThroughput(b *testing.B) {
	e2e.RequireRabbit(b) // for the test user; the stream itself needs no RabbitMQ
	p, caddy := startCaddy(b, startSinkBroker(b))
	chunk := bodyFrames()
	timePaths(b, p, caddy, func(c net.Conn) error {
		for sent := 0; sent < streamBytes; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return fmt.Errorf("after %d bytes: %w", sent, err)
			}
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			return fmt.Errorf("the broker did not confirm %d bytes: %w", streamBytes, err)
		}
		return nil
	})
}

// timePaths runs transfer (streamBytes one way) over a fresh connection,
// past the handshake, to each path in every iteration, timing it and
// Caddy's CPU, and reports them.
func timePaths(b *testing.B, p paths, caddy *e2e.Caddy, transfer func(c net.Conn) error) {
	elapsed, cpu := map[string]time.Duration{}, map[string]time.Duration{}
	b.SetBytes(3 * streamBytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, path := range p.each() {
			b.StopTimer()
			c := clientHandshake(b, path[1])
			b.StartTimer()
			start, cpu0 := time.Now(), caddy.CPUTime()
			err := transfer(c)
			elapsed[path[0]] += time.Since(start)
			cpu[path[0]] += caddy.CPUTime() - cpu0
			_ = c.Close()
			if err != nil {
				b.Fatalf("%s: %v", path[0], err)
			}
		}
	}
	b.StopTimer()
	reportThroughput(b, elapsed, cpu)
}

// reportThroughput reports MB/s per path and their ratios, and the CPU per
// GB Caddy spent on each proxy: its CPU time while a path streamed. In
// process that includes client and broker, so the direct path's time is
// taken off; as its own process, Caddy is idle on the direct path.
func reportThroughput(b *testing.B, elapsed, cpu map[string]time.Duration) {
	rate := map[string]float64{}
	for name, d := range elapsed {
		rate[name] = float64(b.N) * streamBytes / d.Seconds() / 1e6
		b.ReportMetric(rate[name], name+"-MB/s")
	}
	b.ReportMetric(rate["prelude"]/rate["l4proxy"], "prelude/l4proxy")
	b.ReportMetric(rate["prelude"]/rate["direct"], "prelude/direct")
	gb := float64(b.N) * streamBytes / 1e9
	over := func(name string) float64 { return (cpu[name] - cpu["direct"]).Seconds() / gb * 1000 }
	b.ReportMetric(over("prelude"), "prelude-cpu-ms/GB")
	b.ReportMetric(over("l4proxy"), "l4proxy-cpu-ms/GB")
	b.ReportMetric(over("l4proxy")/over("prelude"), "l4proxy/prelude-cpu")
}

// clientHandshake opens an AMQP connection up to Open-Ok by hand, so that
// what follows on the socket is the raw stream.
func clientHandshake(b *testing.B, addr string) net.Conn {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	step := func(m amqp.Method) {
		if m != nil {
			buf, _ := amqp.AppendMethodFrame(nil, 0, m)
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	read := func() amqp.Method {
		f, err := amqp.ReadFrame(c, 1<<20)
		if err != nil {
			b.Fatalf("handshake with %s: %v", addr, err)
		}
		m, err := amqp.ParseMethod(f.Payload)
		if err != nil {
			b.Fatal(err)
		}
		return m
	}
	_, _ = c.Write(amqp.Header091)
	read() // Start
	step(&amqp.StartOk{ClientProperties: amqp.Table{}, Mechanism: "PLAIN",
		Response: amqp.Secret("\x00" + e2e.TestUser + "\x00" + e2e.TestPassword), Locale: "en_US"})
	t := read().(*amqp.Tune)
	step(&amqp.TuneOk{ChannelMax: t.ChannelMax, FrameMax: t.FrameMax})
	step(&amqp.Open{VirtualHost: e2e.VhostA})
	if _, ok := read().(*amqp.OpenOk); !ok {
		b.Fatal("no Open-Ok")
	}
	return c
}

// startStreamingBroker completes any client's handshake, then writes
// streamBytes of body frames and closes: a broker at full speed, which no real
// broker is, so that the proxies are what is measured.
func startStreamingBroker(b *testing.B) string {
	chunk := bodyFrames()
	return e2e.ServeTCP(b, func(c net.Conn) {
		if brokerHandshake(c) != nil {
			return
		}
		for sent := 0; sent < streamBytes; sent += len(chunk) {
			if _, err := c.Write(chunk); err != nil {
				return
			}
		}
	})
}

// bodyFrames returns 1 MiB of body frames at RabbitMQ's default frame_max
// (131072 bytes per frame), what a broker sends, or a client publishes, for
// large messages.
func bodyFrames() []byte {
	var chunk []byte
	for len(chunk) < 1<<20 {
		chunk = amqp.AppendFrame(chunk, amqp.Frame{Type: amqp.FrameBody, Channel: 1, Payload: make([]byte, 131072-8)})
	}
	return chunk
}

// startSinkBroker completes any client's handshake, reads streamBytes,
// then writes one byte to say it has them all.
func startSinkBroker(b *testing.B) string {
	return e2e.ServeTCP(b, func(c net.Conn) {
		if brokerHandshake(c) != nil {
			return
		}
		buf := make([]byte, 256<<10)
		if n, err := io.CopyBuffer(discard{}, io.LimitReader(c, streamBytes), buf); err != nil || n != streamBytes {
			return
		}
		_, _ = c.Write([]byte{1})
	})
}

func brokerHandshake(c net.Conn) error {
	hdr := make([]byte, amqp.HeaderLen)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return err
	}
	send := func(m amqp.Method) error {
		buf, _ := amqp.AppendMethodFrame(nil, 0, m)
		_, err := c.Write(buf)
		return err
	}
	if err := send(&amqp.Start{VersionMinor: 9, ServerProperties: amqp.Table{}, Mechanisms: "PLAIN", Locales: "en_US"}); err != nil {
		return err
	}
	for {
		f, err := amqp.ReadFrame(c, 1<<20)
		if err != nil {
			return err
		}
		m, err := amqp.ParseMethod(f.Payload)
		if err != nil {
			return err
		}
		switch m.(type) {
		case *amqp.StartOk:
			err = send(&amqp.Tune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 60})
		case *amqp.Open:
			return send(&amqp.OpenOk{})
		}
		if err != nil {
			return err
		}
	}
}

func quantile(s []time.Duration, q float64) time.Duration {
	s = append([]time.Duration(nil), s...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// onlyReader and discard hide ReaderFrom / WriterTo so that the client reads
// with its own 256 KiB buffer on every path (io.Discard reads 8 KiB at a time).
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// totalCPU is the CPU time of everything a path runs on: this process
// (clients, servers and an in-process Caddy) plus a Caddy running as its
// own process.
func totalCPU(caddy *e2e.Caddy) time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	self := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if caddy.Separate() {
		return self + caddy.CPUTime()
	}
	return self
}
