// Package e2e runs Caddy Prelude end to end for tests: an in-process Caddy
// with its admin API, the real RabbitMQ, rabbitmqctl, a DNS server on
// loopback and a plain TCP relay. Only tests import it.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/logging"
	_ "github.com/caddyserver/caddy/v2/modules/metrics"
	_ "github.com/mholt/caddy-l4"
)

// CI reports whether the tests run under CI, where a missing peer fails
// the test instead of skipping it.
func CI() bool { return os.Getenv("CI") == "true" }

// RequirePeer fails the test (under CI) or skips it (elsewhere) when addr
// does not accept TCP connections.
func RequirePeer(t testing.TB, what, addr, hint string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err == nil {
		_ = c.Close()
		return
	}
	msg := fmt.Sprintf("%s is not reachable at %s (%v); %s", what, addr, err, hint)
	if CI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// portIP is this test process's own loopback address. `go test ./...` runs
// packages as parallel processes, and Caddy binds with SO_REUSEPORT: a port
// one process frees and another happens to take would be shared by two
// Caddys without an error. Distinct addresses per process rule that out.
var portIP = func() string {
	pid := os.Getpid()
	return fmt.Sprintf("127.%d.%d.%d", 100+(pid>>16)&0x3f, (pid>>8)&0xff, pid&0xff)
}()

// FreePort returns a loopback host:port nobody listens on right now, on
// this process's own loopback address, and never the same one twice in a
// process. Caddy binds with SO_REUSEPORT: had two callers been given one
// port (the kernel may hand a just-freed port out again), two Caddy
// listeners would share it and the kernel would split connections between
// them — once seen as an AMQP client reaching the admin API, which
// answered its header with HTTP 408 after 5 s.
func FreePort(t testing.TB) string {
	t.Helper()
	for {
		ln, err := net.Listen("tcp", portIP+":0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		if _, dup := givenPorts.LoadOrStore(addr, true); !dup {
			return addr
		}
	}
}

var givenPorts sync.Map // host:port -> true, every address FreePort returned

// Caddy is an in-process Caddy started from a JSON config.
type Caddy struct {
	Admin   string // admin API host:port
	LogFile string
	secrets []string
	pid     int       // a Caddy run as its own process; 0 in process
	cmd     *exec.Cmd // that process
	stdout  lockedBuffer
}

// adminClient talks to Caddy's admin API without keeping connections: a
// config load may replace the admin server, and a kept connection to the
// old one would be reset under the next request.
var adminClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// LogLevel is the level of the Caddy logs StartCaddy and StartCaddyProcess
// write: DEBUG for tests (every session is logged), INFO (Caddy's default,
// what operators run) for benchmarks.
var LogLevel = "DEBUG"

var caddyMu sync.Mutex // caddy.Load is process-global: one Caddy at a time

// StartCaddy loads cfg (a JSON object without "admin" and "logging", which
// are added: admin on a free loopback port, logs at LogLevel to a file) and stops
// Caddy at the end of the test. At the end it also fails the test if any
// string given to NoLeak appears in the logs.
func StartCaddy(t testing.TB, cfg map[string]any) *Caddy {
	t.Helper()
	caddyMu.Lock()
	c := &Caddy{Admin: FreePort(t), LogFile: filepath.Join(t.TempDir(), "caddy.log")}
	if err := c.load(cfg); err != nil {
		caddyMu.Unlock()
		t.Fatalf("loading config: %v", err)
	}
	t.Cleanup(func() {
		_ = caddy.Stop()
		caddyMu.Unlock()
		c.checkLeaks(t)
	})
	return c
}

func (c *Caddy) full(cfg map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range cfg {
		out[k] = v
	}
	out["admin"] = map[string]any{"listen": c.Admin, "origins": []string{c.Admin}, "config": map[string]any{"persist": false}}
	out["logging"] = map[string]any{"logs": map[string]any{"default": map[string]any{
		"level": LogLevel, "writer": map[string]any{"output": "file", "filename": c.LogFile},
	}}}
	return out
}

func (c *Caddy) load(cfg map[string]any) error {
	b, err := json.Marshal(c.full(cfg))
	if err != nil {
		return err
	}
	return caddy.Load(b, true)
}

// Reload pushes cfg through the admin API's /load, as an operator would
// with `caddy reload --force`: Caddy reloads even a config equal to the
// running one (without the force it would skip it and a test of "a reload
// in the middle" would reload nothing). It returns once Caddy has stopped
// its previous admin server. Caddy
// serves the new config's admin endpoint on a second socket bound to the
// same port (SO_REUSEPORT) and shuts the old one down in the background: a
// connection the kernel hands to the old socket as it closes is reset, so
// admin requests made before then could fail for no fault of ours.
func (c *Caddy) Reload(t testing.TB, cfg map[string]any) {
	t.Helper()
	stopped := adminStops(c.Logs())
	b, _ := json.Marshal(c.full(cfg))
	req, _ := http.NewRequest(http.MethodPost, "http://"+c.Admin+"/load", bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Cache-Control", "must-revalidate") // reload even if unchanged
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	var body bytes.Buffer
	_, _ = body.ReadFrom(resp.Body)
	_ = resp.Body.Close() // the old server waits for this connection to end
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %s: %s", resp.Status, body.String())
	}
	// Caddy gives the old server 10 s to finish its requests.
	for deadline := time.Now().Add(15 * time.Second); adminStops(c.Logs()) == stopped; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Caddy did not stop its previous admin server after POST /load:\n%s", c.logTail(10))
		}
	}
}

// adminStops counts the admin servers Caddy reports stopping (or failing
// to stop) in its log.
func adminStops(log string) int {
	return strings.Count(log, `"msg":"stopped previous server"`) +
		strings.Count(log, `"msg":"stopping current admin endpoint"`)
}

// NoLeak registers strings (passwords) that must never reach the logs.
func (c *Caddy) NoLeak(secrets ...string) { c.secrets = append(c.secrets, secrets...) }

// Logs returns what Caddy logged so far.
func (c *Caddy) Logs() string {
	b, _ := os.ReadFile(c.LogFile)
	return string(b)
}

func (c *Caddy) checkLeaks(t testing.TB) {
	logs := c.Logs()
	if logs == "" {
		t.Errorf("caddy wrote no logs to %s: the leak check would be vacuous", c.LogFile)
	}
	for _, s := range c.secrets {
		if strings.Contains(logs, s) {
			t.Errorf("a secret appears in the logs:\n%s", logs)
		}
	}
	if t.Failed() {
		t.Logf("last lines of the Caddy log (secrets redacted):\n%s", c.logTail(60))
	}
}

// logTail returns the log's last n lines with every NoLeak secret replaced.
func (c *Caddy) logTail(n int) string {
	lines := strings.Split(strings.TrimRight(c.Logs(), "\n"), "\n")
	tail := strings.Join(lines[max(0, len(lines)-n):], "\n")
	for _, s := range c.secrets {
		tail = strings.ReplaceAll(tail, s, "[secret]")
	}
	return tail
}

// Layer4 builds the "apps" part of a config with one layer4 server listening
// on listen and running routes.
func Layer4(listen string, routes ...map[string]any) map[string]any {
	return map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"test": map[string]any{"listen": []string{listen}, "routes": routes},
	}}}}
}

// Metrics returns the admin API's /metrics text.
func (c *Caddy) Metrics(t testing.TB) string {
	t.Helper()
	resp, err := adminClient.Get("http://" + c.Admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return b.String()
}

// WaitMetric waits up to five seconds for a /metrics line equal to line.
func (c *Caddy) WaitMetric(t testing.TB, line string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		last = c.Metrics(t)
		for _, l := range strings.Split(last, "\n") {
			if l == line {
				return
			}
		}
	}
	t.Fatalf("no metric line %q in:\n%s", line, last)
}

// StartCaddyfile adapts a Caddyfile and starts Caddy with it, like
// StartCaddy (the Caddyfile's own admin and logging settings are replaced).
func StartCaddyfile(t testing.TB, caddyfile string) *Caddy {
	t.Helper()
	return StartCaddyfileWith(t, caddyfile, nil)
}

// StartCaddyfileWith is StartCaddyfile with more apps merged into the
// adapted config (for apps the Caddyfile cannot express, such as events
// subscriptions to a test handler).
func StartCaddyfileWith(t testing.TB, caddyfile string, apps map[string]any) *Caddy {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting the Caddyfile: %v", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	all, _ := cfg["apps"].(map[string]any)
	for k, v := range apps {
		all[k] = v
	}
	return StartCaddy(t, cfg)
}

// MetricValue returns the value of one series ("name{labels}") from
// /metrics, or 0 when it is absent.
func (c *Caddy) MetricValue(t testing.TB, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(c.Metrics(t), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", l, err)
			}
			return f
		}
	}
	return 0
}

// Do sends an admin API request without a body and returns the status code
// and body.
func (c *Caddy) Do(t testing.TB, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+c.Admin+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// Get fetches an admin API path and returns the status code and body.
func (c *Caddy) Get(t testing.TB, path string) (int, string) {
	t.Helper()
	resp, err := adminClient.Get("http://" + c.Admin + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, _ = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String()
}

// WaitGoroutines waits up to timeout for this process to be back to at most
// base+2 goroutines (base counted before the connections under test, after a
// warm-up one), and fails the test with every goroutine's stack if it is not.
func WaitGoroutines(t testing.TB, base int, timeout time.Duration) {
	t.Helper()
	var now int
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if now = runtime.NumGoroutine(); now <= base+2 || time.Now().After(deadline) {
			break
		}
	}
	if now > base+2 {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines once the connections ended, %d before:\n%s", now, base, buf[:runtime.Stack(buf, true)])
	}
}
