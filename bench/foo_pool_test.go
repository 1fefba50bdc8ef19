package bench

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// BenchmarkFooPool measures short-lived Foo clients, 200 at a time, each
// connecting, sending 10 pipelined requests, reading the 10 answers and
// closing, until 20,000 requests are answered: requests per second and
// CPU per request, direct to the server, through the foo handler
// (a server connection per client) and through it with a pool of 4.
func BenchmarkFooPool(b *testing.B) {
	srv := footest.StartServer(b, footest.ServerOptions{})
	addrs := map[string]string{"direct": srv.Addr}
	servers := map[string]any{}
	for _, name := range []string{"unpooled", "pooled"} {
		addrs[name] = e2e.FreePort(b)
		h := map[string]any{"handler": "foo", "to": []string{srv.Addr}, "stats": name,
			"recovery": filepath.Join(b.TempDir(), name+".json")}
		if name == "pooled" {
			h["pool"] = map[string]any{"max_connections": 4}
		}
		servers[name] = map[string]any{"listen": []string{addrs[name]}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"foo": map[string]any{}}}, "handle": []any{h}}}}
	}
	caddy := startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}})
	const clients, perClient, total = 200, 10, 20000
	rate := map[string][]float64{}
	cpu := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range []string{"direct", "unpooled", "pooled"} {
			cpu0 := totalCPU(caddy)
			took, err := shortFooClients(addrs[p], clients, perClient, total)
			cpu[p] += totalCPU(caddy) - cpu0
			if err != nil {
				b.Fatalf("%s: %v", p, err)
			}
			rate[p] = append(rate[p], total/took.Seconds())
		}
	}
	b.StopTimer()
	for _, p := range []string{"direct", "unpooled", "pooled"} {
		b.ReportMetric(median(rate[p]), p+"-req/s")
		b.ReportMetric(float64(cpu[p].Nanoseconds())/float64(b.N*total)/1000, p+"-total-cpu-us/req")
	}
	b.ReportMetric(pairedRatio(rate["pooled"], rate["unpooled"]), "pooled/unpooled-rate")
	b.ReportMetric(pairedRatio(rate["unpooled"], rate["direct"]), "unpooled/direct-rate")
}

// shortFooClients runs clients goroutines of short-lived connections until
// total requests are answered.
func shortFooClients(addr string, clients, perClient, total int) (time.Duration, error) {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	left := total / perClient
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if left == 0 || firstErr != nil {
					mu.Unlock()
					return
				}
				left--
				mu.Unlock()
				if err := shortFoo(addr, perClient); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

func shortFoo(addr string, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var sb strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&sb, "REQ %d payload-%d\n", i, i)
	}
	if _, err := c.Write([]byte(sb.String())); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	for i := 0; i < n; i++ {
		if _, err := r.ReadString('\n'); err != nil {
			return fmt.Errorf("after %d answers: %w", i, err)
		}
	}
	return nil
}
