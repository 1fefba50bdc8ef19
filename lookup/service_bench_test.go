package lookup

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// BenchmarkDistinctKeys drives a Cache in front of a real routing
// service (an HTTP server on loopback; Debian's redis-server) with
// distinct keys, each asked by 4 clients at once and then again by 4
// more (within the TTL), from 64 goroutines: the rate of distinct keys
// it sustains, and how many requests the service saw per key (the goal:
// one per key per TTL).
func BenchmarkDistinctKeys(b *testing.B) {
	var asked atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		_, _ = w.Write([]byte("127.0.0.1:9418"))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	h, _ := NewHTTP("http://"+ln.Addr().String()+"/route/{key}", &http.Client{Transport: tr})
	rs := e2e.StartRedis(b)
	r, _ := NewRedis("redis://"+rs.Addr, "route:", "")
	defer r.Close()
	r.client.Set(context.Background(), "route:any", "127.0.0.1:9418", 0)
	var redisAsked atomic.Int64
	redisFetch := func(ctx context.Context, key string) (Answer, bool, error) {
		redisAsked.Add(1)
		// every key reads one real Redis string, so the round trip is real
		a, _, err := r.Fetch(ctx, "any")
		return a, true, err
	}
	for _, src := range []struct {
		name  string
		fetch Fetch
		asked *atomic.Int64
	}{{"http", h.Fetch, &asked}, {"redis", redisFetch, &redisAsked}} {
		b.Run(src.name, func(b *testing.B) {
			c, _ := NewCache(CacheConfig{TTL: time.Hour, NegativeTTL: time.Hour, Timeout: 5 * time.Second, MaxEntries: 1 << 20}, src.fetch)
			const keysPerOp = 10_000
			before := src.asked.Load()
			keys := make(chan string, 1024)
			var wg sync.WaitGroup
			var failed atomic.Int64
			b.ResetTimer()
			start := time.Now()
			for range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for k := range keys {
						var inner sync.WaitGroup
						for range 4 {
							inner.Add(1)
							go func() {
								defer inner.Done()
								if _, ok, _, err := c.Get(context.Background(), k); err != nil || !ok {
									failed.Add(1)
								}
							}()
						}
						inner.Wait()
						for range 4 {
							if _, _, r, _ := c.Get(context.Background(), k); r != Hit {
								failed.Add(1)
							}
						}
					}
				}()
			}
			for i := range b.N * keysPerOp {
				keys <- fmt.Sprintf("%s-%d-%d", src.name, b.N, i)
			}
			close(keys)
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if failed.Load() > 0 {
				b.Fatalf("%d lookups failed or missed the cache", failed.Load())
			}
			n := float64(b.N * keysPerOp)
			b.ReportMetric(n/elapsed.Seconds(), "distinct-keys/s")
			b.ReportMetric(float64(src.asked.Load()-before)/n, "requests/key")
		})
	}
}
