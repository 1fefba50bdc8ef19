package bench

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// brokerPID is RabbitMQ's Erlang VM, whose CPU time is the broker's cost.
func brokerPID(b *testing.B) int {
	out, err := exec.Command("pgrep", "-o", "beam.smp").Output()
	pid, perr := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || perr != nil {
		b.Fatalf("RabbitMQ's beam.smp process not found: %v", err)
	}
	return pid
}

// firehose starts and stops a rabbitmq_tracing trace (the firehose, written
// to a file by the plugin) of vhost "/" through the management API.
type firehose struct{ api string }

func startFirehosePlugin(b *testing.B) *firehose {
	if out, err := exec.Command("rabbitmq-plugins", "enable", "--quiet", "rabbitmq_tracing").CombinedOutput(); err != nil {
		b.Fatalf("rabbitmq-plugins enable rabbitmq_tracing: %v\n%s", err, out)
	}
	f := &firehose{api: "http://guest:guest@127.0.0.1:15672/api/traces/%2F/prelude-bench"}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		resp, err := http.Get("http://guest:guest@127.0.0.1:15672/api/overview")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return f
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("the management API did not answer on 127.0.0.1:15672: %v", err)
		}
	}
}

func (f *firehose) do(b *testing.B, method, body string) {
	req, _ := http.NewRequest(method, f.api, bytes.NewBufferString(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatalf("%s trace: %v", method, err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 300 && !(method == http.MethodDelete && resp.StatusCode == http.StatusNotFound) {
		b.Fatalf("%s trace: %s", method, resp.Status)
	}
}

func (f *firehose) on(b *testing.B) {
	f.do(b, http.MethodPut, `{"format": "json", "pattern": "#", "tracer_connection_username": "guest", "tracer_connection_password": "guest"}`)
}
func (f *firehose) off(b *testing.B) { f.do(b, http.MethodDelete, "") }

// BenchmarkCaptureVsFirehose records the same 16-byte traffic (one
// publisher, one consumer, vhost "/") three ways, one after the other in
// each iteration: not at all (direct), by RabbitMQ's firehose tracer
// (rabbitmq_tracing, JSON to a file), and by Prelude's NDJSON capture,
// bodies kept. It reports messages per second and the broker's CPU per
// message (and Caddy's, for the capture).
func BenchmarkCaptureVsFirehose(b *testing.B) {
	e2e.RequireRabbit(b)
	fh := startFirehosePlugin(b)
	defer fh.off(b)
	addr := e2e.FreePort(b)
	file := filepath.Join(b.TempDir(), "capture.ndjson")
	caddy := startBenchCaddy(b, e2e.Layer4(addr, map[string]any{
		"match": []any{map[string]any{"amqp": map[string]any{}}},
		"handle": []any{map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{e2e.RabbitAddr}},
			"captures": []any{map[string]any{"file": file, "filter": map[string]any{"vhost": "/"}}}}},
	}))
	beam := brokerPID(b)
	const msgs = 10000
	paths := []string{"untraced", "firehose", "capture"}
	rate := map[string][]float64{}
	broker, proxy := map[string]time.Duration{}, map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			target := e2e.RabbitAddr
			switch p {
			case "firehose":
				fh.on(b)
			case "capture":
				target = addr
			}
			cpuB, cpuP := e2e.ProcessCPU(beam), totalCPU(caddy)
			d, err := oneToOne(e2e.URL(target, "/"), "bench-"+p, msgs)
			broker[p] += e2e.ProcessCPU(beam) - cpuB
			proxy[p] += totalCPU(caddy) - cpuP
			if p == "firehose" {
				fh.off(b)
			}
			if err != nil {
				b.Fatalf("%s: %v", p, err)
			}
			rate[p] = append(rate[p], msgs/d.Seconds())
		}
	}
	b.StopTimer()
	for _, p := range paths {
		b.ReportMetric(median(rate[p]), p+"-msg/s")
		b.ReportMetric(float64(broker[p].Nanoseconds())/float64(b.N*msgs)/1000, p+"-broker-cpu-us/msg")
		b.ReportMetric(float64(proxy[p].Nanoseconds())/float64(b.N*msgs)/1000, p+"-bench-cpu-us/msg")
	}
	b.ReportMetric(median(rate["capture"])/median(rate["firehose"]), "capture/firehose-rate")
	if st, err := os.Stat(file); err == nil {
		b.ReportMetric(float64(st.Size())/float64(b.N*msgs), "capture-bytes/msg")
	}
}

// BenchmarkCaptureLargeBodies publishes 128 KiB messages from one
// connection to a consumer on another through Prelude, without a capture
// and with an NDJSON or pcapng capture that keeps 64 bytes of each body,
// and reports the delivered MB/s of each.
func BenchmarkCaptureLargeBodies(b *testing.B) {
	e2e.RequireRabbit(b)
	addrs := map[string]string{}
	servers := map[string]any{}
	dir := b.TempDir()
	for _, p := range []string{"nocapture", "ndjson", "pcapng"} {
		addrs[p] = e2e.FreePort(b)
		h := map[string]any{"handler": "amqp", "name": p, "default": map[string]any{"to": []string{e2e.RabbitAddr}}}
		if p != "nocapture" {
			h["captures"] = []any{map[string]any{"file": filepath.Join(dir, "large."+p), "format": p, "body": 64}}
		}
		servers[p] = map[string]any{"listen": []string{addrs[p]}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"amqp": map[string]any{}}}, "handle": []any{h}}}}
	}
	caddy := startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": servers}}})
	_ = caddy
	const msgs, size = 400, 128 << 10
	paths := []string{"nocapture", "ndjson", "pcapng"}
	rate := map[string][]float64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			d, err := oneToOneSized(e2e.URL(addrs[p], "/"), "bench-large", msgs, size)
			if err != nil {
				b.Fatalf("%s: %v", p, err)
			}
			rate[p] = append(rate[p], float64(msgs*size)/d.Seconds()/1e6)
		}
	}
	b.StopTimer()
	for _, p := range paths {
		b.ReportMetric(median(rate[p]), p+"-MB/s")
	}
	b.ReportMetric(median(rate["ndjson"])/median(rate["nocapture"]), "ndjson/nocapture")
	b.ReportMetric(median(rate["pcapng"])/median(rate["nocapture"]), "pcapng/nocapture")
}

// oneToOneSized returns the time n messages of size bytes took from a
// publisher connection to a consumer connection (auto-ack, prefetch
// unlimited).
func oneToOneSized(url, name string, n, size int) (time.Duration, error) {
	cc, err := dialNamed(url, name)
	if err != nil {
		return 0, err
	}
	defer cc.Close()
	pc, err := dialNamed(url, name)
	if err != nil {
		return 0, err
	}
	defer pc.Close()
	cch, err := cc.Channel()
	if err != nil {
		return 0, err
	}
	q, err := cch.QueueDeclare("", false, true, false, false, nil)
	if err != nil {
		return 0, err
	}
	deliveries, err := cch.Consume(q.Name, "", true, false, false, false, nil)
	if err != nil {
		return 0, err
	}
	pch, err := pc.Channel()
	if err != nil {
		return 0, err
	}
	body := bytes.Repeat([]byte("x"), size)
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if err := pch.Publish("", q.Name, false, false, amqp091.Publishing{Body: body}); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	for i := 0; i < n; i++ {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return 0, fmt.Errorf("deliveries closed after %d", i)
			}
			if len(d.Body) != size {
				return 0, fmt.Errorf("delivery %d: %d bytes, want %d", i, len(d.Body), size)
			}
		case <-time.After(30 * time.Second):
			return 0, fmt.Errorf("%d of %d delivered", i, n)
		}
	}
	d := time.Since(start)
	return d, <-errc
}
