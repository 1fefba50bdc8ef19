package bench

import (
	"net"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// farClientDelay is the one-way delay BenchmarkSetupFarClient puts between
// the client and each path: a client in another zone than the proxy and
// its brokers. Go timers on a busy host stretch it; the direct path's
// figure shows what it came to.
const farClientDelay = 500 * time.Microsecond

// BenchmarkSetupFarClient measures connection setup (connect, open a
// channel, close) for a client farClientDelay away from the proxy, with the
// broker next to the proxy: direct; Prelude with one default farm (the
// broker is dialed at the client's protocol header, so the broker's side
// of the handshake overlaps the client's); Prelude with a vhost route to
// the same broker (dialed after the client's Open, one handshake after the
// other); HAProxy when PRELUDE_BENCH_HAPROXY is set. Medians of setup time
// and paired ratios to direct.
func BenchmarkSetupFarClient(b *testing.B) {
	e2e.RequireRabbit(b)
	near := map[string]string{"direct": e2e.RabbitAddr}
	servers := map[string]any{}
	for name, h := range map[string]map[string]any{
		"prelude":             {"handler": "amqp", "default": map[string]any{"to": []string{e2e.RabbitAddr}}},
		"prelude-vhost-route": {"handler": "amqp", "routes": []any{map[string]any{"vhosts": []string{"/"}, "to": []string{e2e.RabbitAddr}}}},
	} {
		near[name] = e2e.FreePort(b)
		servers[name] = map[string]any{"listen": []string{near[name]}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"amqp": map[string]any{}}}, "handle": []any{h}}}}
	}
	startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}})
	if hp := startHAProxy(b, e2e.RabbitAddr); hp != nil {
		near["haproxy"] = hp.Addr
	}
	paths := benchPaths([]string{"direct", "prelude", "prelude-vhost-route", "haproxy"}, near)
	far := map[string]string{}
	for _, p := range paths {
		far[p] = e2e.ServeTCP(b, func(c net.Conn) { delayedForward(c, near[p], farClientDelay) })
	}
	const setups = 10
	took := map[string][]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			d, err := connectChannelClose(e2e.URL(far[p], "/"), p, setups)
			if err != nil {
				b.Fatalf("%s: %v", p, err)
			}
			took[p] = append(took[p], float64(d.Microseconds())/setups)
		}
	}
	b.StopTimer()
	for _, p := range paths {
		b.ReportMetric(median(took[p]), p+"-setup-us")
		if p != "direct" {
			b.ReportMetric(pairedRatio(took[p], took["direct"]), p+"-setup/direct")
		}
	}
	b.ReportMetric(pairedRatio(took["prelude"], took["prelude-vhost-route"]), "early/after-open")
}

// delayedForward relays c to target, each chunk delivered delay after it
// was read, in order, both ways, with half-close.
func delayedForward(c net.Conn, target string, delay time.Duration) {
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{})
	go func() { delayedCopy(u, c, delay); close(done) }()
	delayedCopy(c, u, delay)
	<-done
}

func delayedCopy(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		due time.Time
		b   []byte
	}
	queue := make(chan chunk, 256)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				queue <- chunk{time.Now().Add(delay), append([]byte(nil), buf[:n]...)}
			}
			if err != nil {
				close(queue)
				return
			}
		}
	}()
	for c := range queue {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.b); err != nil {
			_ = src.Close() // ends the reader
			for range queue {
			}
			return
		}
	}
	_ = dst.(*net.TCPConn).CloseWrite()
}
