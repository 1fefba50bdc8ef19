package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// BenchmarkLookupServiceSetup compares the connection setup of a git
// request routed by a static to, by an http lookup and by a redis lookup
// (all to one upstream), round-robin in every iteration, 500 requests per
// path per iteration: with every key cached (warm), and with a key never
// seen (cold: one round trip to the service). The upstream answers the
// request line with a flush packet, so the figure is the proxy's setup
// (accept, read the request, look up, dial, forward, relay the answer) and
// not a git process's start-up. Reports medians and p99 per path and the
// ratios lookup/static, and how many requests the services saw per key.
func BenchmarkLookupServiceSetup(b *testing.B) {
	upstream := e2e.ServeTCP(b, answerFlush)
	var httpAsked atomic.Int64
	svc := e2e.FreePort(b)
	ln, err := net.Listen("tcp", svc)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpAsked.Add(1)
		_, _ = w.Write([]byte(upstream))
	})}
	go srv.Serve(ln)
	b.Cleanup(func() { _ = srv.Close() })
	rs := e2e.StartRedis(b)
	const keys = 100
	for i := range keys {
		rs.MustDo("SET", fmt.Sprintf("prelude:route:owner%d", i), upstream)
	}
	paths := []string{"static", "http", "redis"}
	listen := map[string]string{}
	servers := map[string]any{}
	for _, p := range paths {
		listen[p] = e2e.FreePort(b)
		h := map[string]any{"handler": "git", "to": []string{upstream}}
		switch p {
		case "http":
			h = map[string]any{"handler": "git", "lookup": map[string]any{"source": "http",
				"url": "http://" + svc + "/route/{key}", "key": "{l4.git.owner}", "ttl": int64(time.Hour)}}
		case "redis":
			h = map[string]any{"handler": "git", "lookup": map[string]any{"source": "redis",
				"url": "redis://" + rs.Addr, "key": "{l4.git.owner}", "ttl": int64(time.Hour)}}
		}
		servers[p] = map[string]any{"listen": []string{listen[p]}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"git": map[string]any{}}}, "handle": []any{h}}}}
	}
	startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}})
	request := func(addr, owner string) time.Duration {
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		line := fmt.Sprintf("git-upload-pack /%s/x.git\x00host=h\x00", owner)
		if _, err := fmt.Fprintf(c, "%04x%s", len(line)+4, line); err != nil {
			b.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "0000" {
			b.Fatalf("%s: %q %v (want the upstream's flush packet)", addr, got, err)
		}
		return time.Since(start)
	}
	for _, p := range paths { // warm every key
		for i := range keys {
			request(listen[p], fmt.Sprintf("owner%d", i))
		}
	}
	warm := map[string][]time.Duration{}
	cold := map[string][]time.Duration{}
	coldKeys := 0
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := range 500 {
			for _, p := range paths {
				warm[p] = append(warm[p], request(listen[p], fmt.Sprintf("owner%d", i%keys)))
			}
		}
		for range 50 {
			owner := fmt.Sprintf("cold%d-%d", n, coldKeys)
			coldKeys++
			rs.MustDo("SET", "prelude:route:"+owner, upstream)
			cold["static"] = append(cold["static"], request(listen["static"], owner))
			cold["http"] = append(cold["http"], request(listen["http"], owner))
			cold["redis"] = append(cold["redis"], request(listen["redis"], owner))
		}
	}
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for _, p := range paths {
		b.ReportMetric(us(quantile(warm[p], 0.5)), p+"-warm-p50-us")
		b.ReportMetric(us(quantile(warm[p], 0.99)), p+"-warm-p99-us")
		b.ReportMetric(us(quantile(cold[p], 0.5)), p+"-cold-p50-us")
	}
	for _, p := range paths[1:] {
		b.ReportMetric(us(quantile(warm[p], 0.5))/us(quantile(warm["static"], 0.5)), p+"/static-warm")
		b.ReportMetric(us(quantile(cold[p], 0.5))/us(quantile(cold["static"], 0.5)), p+"/static-cold")
	}
	b.ReportMetric(float64(httpAsked.Load()-keys)/float64(coldKeys), "http-requests/cold-key")
}

// BenchmarkLookupReloadStall: git requests through a lookup file of a
// million keys, from 4 clients connecting as fast as they can, first with
// the file unchanged and then while it is replaced (and so parsed again
// by Caddy) every 700 ms: setup p50, p99, p99.9 and the worst, in both
// phases. A stall a reload adds shows as the reloading worst above the
// quiet one. The upstream answers the request line with a flush packet.
func BenchmarkLookupReloadStall(b *testing.B) {
	upstream := e2e.ServeTCP(b, answerFlush)
	table := filepath.Join(b.TempDir(), "routes.tsv")
	writeLookupTable(b, table, "/big.git", upstream)
	listen := e2e.FreePort(b)
	var static *e2e.Caddy
	if os.Getenv("PRELUDE_BENCH_CADDY") != "" { // a static Caddy of its own, to compare resident memory
		static = startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
			"static": map[string]any{"listen": []string{e2e.FreePort(b)}, "routes": []any{map[string]any{
				"match": []any{map[string]any{"git": map[string]any{}}}, "handle": []any{map[string]any{"handler": "git", "to": []string{upstream}}}}}},
		}}}})
	}
	caddy := startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"lookup": map[string]any{"listen": []string{listen}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"git": map[string]any{}}}, "handle": []any{map[string]any{"handler": "git",
				"lookup": map[string]any{"source": "file", "path": table, "key": "{l4.git.repo}", "refresh": int64(100 * time.Millisecond)}}}}}},
	}}}})
	request := func() (time.Duration, error) {
		start := time.Now()
		c, err := net.Dial("tcp", listen)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		line := "git-upload-pack /big.git\x00host=h\x00"
		if _, err := fmt.Fprintf(c, "%04x%s", len(line)+4, line); err != nil {
			return 0, err
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "0000" {
			return 0, fmt.Errorf("%q %v", got, err)
		}
		return time.Since(start), nil
	}
	phase := func(d time.Duration, during func(stop <-chan struct{})) []time.Duration {
		stop := make(chan struct{})
		var mu sync.Mutex
		var all []time.Duration
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var mine []time.Duration
				for {
					select {
					case <-stop:
						mu.Lock()
						all = append(all, mine...)
						mu.Unlock()
						return
					default:
					}
					t, err := request()
					if err != nil {
						b.Error(err)
						continue
					}
					mine = append(mine, t)
				}
			}()
		}
		done := make(chan struct{})
		go func() { during(stop); close(done) }()
		time.Sleep(d)
		close(stop)
		wg.Wait()
		<-done
		return all
	}
	var quiet, reloading []time.Duration
	reloads := 0
	var rssQuiet, memQuiet uint64
	b.ResetTimer()
	for range b.N {
		quiet = append(quiet, phase(3*time.Second, func(<-chan struct{}) {})...)
		rssQuiet = max(rssQuiet, caddy.RSS())
		memQuiet = max(memQuiet, caddy.Footprint())
		reloading = append(reloading, phase(3*time.Second, func(stop <-chan struct{}) {
			// Reload after reload: touch the file, wait for Caddy to have
			// parsed it again, touch it again.
			for {
				now := time.Now()
				if err := os.Chtimes(table, now, now); err != nil { // a new mtime: Caddy parses it again
					b.Error(err)
				}
				reloads++
				if !waitReloads(caddy, reloads, stop) {
					return
				}
			}
		})...)
		// The next quiet phase begins once the last reload is done.
		waitReloads(caddy, reloads, nil)
	}
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	for name, s := range map[string][]time.Duration{"quiet": quiet, "reloading": reloading} {
		b.ReportMetric(us(quantile(s, 0.5)), name+"-p50-us")
		b.ReportMetric(us(quantile(s, 0.99)), name+"-p99-us")
		b.ReportMetric(us(quantile(s, 0.999)), name+"-p99.9-us")
		b.ReportMetric(us(quantile(s, 1)), name+"-max-us")
	}
	b.ReportMetric(float64(len(quiet))/float64(b.N)/3, "quiet-setups/s")
	b.ReportMetric(float64(len(reloading))/float64(b.N)/3, "reloading-setups/s")
	b.ReportMetric(float64(reloads)/float64(b.N), "reloads/iteration")
	if took := reloadTimes(caddy); len(took) > 0 {
		b.ReportMetric(quantile(took, 0.5).Seconds(), "reload-p50-s")
		b.ReportMetric(quantile(took, 1).Seconds(), "reload-max-s")
	}
	if static != nil && caddy.Separate() { // resident memory: only of a Caddy of its own
		b.ReportMetric(float64(static.RSS())/(1<<20), "static-caddy-rss-MB")
		b.ReportMetric(float64(rssQuiet)/(1<<20), "lookup-caddy-rss-MB")
		b.ReportMetric(float64(caddy.RSS())/(1<<20), "after-reloads-rss-MB")
		// A table built by a child process is a memory file: count the
		// pages Caddy has not touched yet too.
		b.ReportMetric(float64(memQuiet)/(1<<20), "lookup-caddy-mem-MB")
		b.ReportMetric(float64(caddy.Footprint())/(1<<20), "after-reloads-mem-MB")
	}
}

// answerFlush reads one git pkt-line request and answers it with a flush
// packet: an upstream that costs the benchmark no git process.
func answerFlush(c net.Conn) {
	defer c.Close()
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	n, err := strconv.ParseUint(string(hdr[:]), 16, 16)
	if err != nil || n < 4 {
		return
	}
	if _, err := io.CopyN(io.Discard, c, int64(n-4)); err == nil {
		_, _ = c.Write([]byte("0000"))
	}
}

// waitReloads waits until Caddy has logged n reloads of its lookup file,
// or stop is closed (then it reports false). Without stop it gives up
// after a minute. It reads only what the log gained since its last look,
// so that watching costs the clients beside it little.
func waitReloads(c *e2e.Caddy, n int, stop <-chan struct{}) bool {
	limit := time.After(time.Minute)
	for reloadLog.count(c) < n {
		select {
		case <-stop:
			return false
		case <-limit:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return true
}

// logCounter counts "lookup file reloaded" lines in a Caddy's log as it
// grows, reading each byte once.
type logCounter struct {
	path    string
	off     int64
	partial []byte // a line not yet ended
	reloads int
}

var reloadLog logCounter

func (l *logCounter) count(c *e2e.Caddy) int {
	if l.path != c.LogFile {
		*l = logCounter{path: c.LogFile}
	}
	f, err := os.Open(l.path)
	if err != nil {
		return l.reloads
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, l.off, 1<<40))
	l.off += int64(len(b))
	b = append(l.partial, b...)
	end := bytes.LastIndexByte(b, '\n') + 1
	l.reloads += bytes.Count(b[:end], []byte("lookup file reloaded"))
	l.partial = append([]byte(nil), b[end:]...)
	return l.reloads
}

// reloadTimes are the durations Caddy logged for its lookup file reloads.
func reloadTimes(c *e2e.Caddy) []time.Duration {
	var out []time.Duration
	for _, line := range strings.Split(c.Logs(), "\n") {
		if !strings.Contains(line, "lookup file reloaded") {
			continue
		}
		var entry struct {
			Took any `json:"took"`
		}
		if json.Unmarshal([]byte(line), &entry) != nil {
			continue
		}
		switch v := entry.Took.(type) {
		case float64: // seconds
			out = append(out, time.Duration(v*float64(time.Second)))
		case string:
			if d, err := time.ParseDuration(v); err == nil {
				out = append(out, d)
			}
		}
	}
	return out
}
