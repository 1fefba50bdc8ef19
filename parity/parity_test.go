package parity

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	_ "github.com/caddyprelude/prelude"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// The configs of docs/proxymachine.md. LISTEN, UPSTREAM, DEAD and SILENT
// stand for addresses the tests fill in.
const (
	cfgRemote = `route {
	proxy UPSTREAM
}`
	cfgReply = `route {
	reply "HELLO\n"
	proxy UPSTREAM
}`
	cfgClose = `route {
	close
}`
	cfgCloseMessage = `route {
	reply "go away\n" close
}`
	cfgSOCKS4 = `@socks4 socks4
route @socks4 {
	socks4 {
		allow 127.0.0.0/8
	}
}`
	cfgConnectTimeout = `@git git
route @git {
	git {
		to DEAD
		dial_timeout 2s
	}
}`
	cfgInactivity = `@git git
route @git {
	git {
		to SILENT
		first_byte_timeout 300ms
	}
}`
)

func TestDocShowsTheTestedConfigs(t *testing.T) {
	doc, err := os.ReadFile("../docs/proxymachine.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{cfgSOCKS4, cfgRemote, cfgReply, cfgClose, cfgCloseMessage, cfgConnectTimeout, cfgInactivity} {
		if !bytes.Contains(doc, []byte(c)) {
			t.Errorf("docs/proxymachine.md does not show this tested config:\n%s", c)
		}
	}
}

// recorder is an event handler module that records what it receives.
type recorder struct{}

var (
	recMu  sync.Mutex
	events []caddy.Event
)

func (recorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.prelude_test_recorder", New: func() caddy.Module { return recorder{} }}
}

func (recorder) Handle(_ context.Context, e caddy.Event) error {
	recMu.Lock()
	events = append(events, e)
	recMu.Unlock()
	return nil
}

func init() { caddy.RegisterModule(recorder{}) }

var _ caddyevents.Handler = recorder{}

// waitEvent waits for an event called name and returns its data.
func waitEvent(t *testing.T, name string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		recMu.Lock()
		for _, e := range events {
			if e.Name() == name {
				recMu.Unlock()
				return e.Data
			}
		}
		recMu.Unlock()
	}
	t.Fatalf("no %s event", name)
	return nil
}

// start runs Caddy with routes (one of the configs above) on a free port,
// with an events subscription that records every upstream event.
func start(t *testing.T, routes string, addrs map[string]string) (*e2e.Caddy, string) {
	t.Helper()
	listen := e2e.FreePort(t)
	for k, v := range addrs {
		routes = strings.ReplaceAll(routes, k, v)
	}
	indented := "\t\t\t" + strings.ReplaceAll(routes, "\n", "\n\t\t\t")
	cf := "{\n\tlayer4 {\n\t\t" + listen + " {\n" + indented + "\n\t\t}\n\t}\n}\n"
	c := e2e.StartCaddyfileWith(t, cf, map[string]any{"events": map[string]any{"subscriptions": []any{
		map[string]any{"events": []string{"upstream_connect_error", "upstream_inactivity_timeout"},
			"handlers": []any{map[string]any{"handler": "prelude_test_recorder"}}},
	}}})
	recMu.Lock()
	events = nil
	recMu.Unlock()
	return c, listen
}

// echoServer echoes every connection.
func echoServer(t *testing.T) string {
	t.Helper()
	return e2e.ServeTCP(t, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

// silentServer accepts and never writes.
func silentServer(t *testing.T) string {
	t.Helper()
	return e2e.ServeTCP(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func TestRemote(t *testing.T) {
	_, addr := start(t, cfgRemote, map[string]string{"UPSTREAM": echoServer(t)})
	c := dial(t, addr)
	_, _ = c.Write([]byte("ping"))
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo through :remote: %q %v", got, err)
	}
}

func TestReplyThenProxy(t *testing.T) {
	_, addr := start(t, cfgReply, map[string]string{"UPSTREAM": echoServer(t)})
	c := dial(t, addr)
	_, _ = c.Write([]byte("ping"))
	got := make([]byte, len("HELLO\nping"))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "HELLO\nping" {
		t.Fatalf(":reply then :remote: %q %v", got, err)
	}
}

func TestClose(t *testing.T) {
	for cfg, want := range map[string]string{cfgClose: "", cfgCloseMessage: "go away\n"} {
		t.Run(want, func(t *testing.T) {
			_, addr := start(t, cfg, nil)
			c := dial(t, addr)
			if want != "" {
				// Unread input must not turn the close into a reset
				// that could destroy the message.
				_, _ = c.Write([]byte("x"))
			}
			if got, err := io.ReadAll(c); string(got) != want || err != nil {
				t.Fatalf("got %q %v, want %q then close", got, err, want)
			}
		})
	}
}

func TestConnectErrorIsReportedLoggedAndEmitted(t *testing.T) {
	e2e.RequireGit(t)
	dead := e2e.FreePort(t)
	c, addr := start(t, cfgConnectTimeout, map[string]string{"DEAD": dead})
	_, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+addr+"/x.git")
	if err == nil || !strings.Contains(errOut, "fatal: remote error: repository server for /x.git is unreachable") {
		t.Fatalf("git: %v\n%s", err, errOut)
	}
	data := waitEvent(t, "upstream_connect_error")
	if data["upstream"] != dead || !strings.Contains(fmt.Sprint(data["error"]), "refused") {
		t.Fatalf("event data %v", data)
	}
	if !strings.Contains(c.Logs(), `"msg":"upstream_connect_error"`) {
		t.Fatalf("connect error not logged:\n%s", c.Logs())
	}
}

func TestInactivityTimeoutIsReportedLoggedAndEmitted(t *testing.T) {
	e2e.RequireGit(t)
	silent := silentServer(t)
	c, addr := start(t, cfgInactivity, map[string]string{"SILENT": silent})
	start := time.Now()
	_, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+addr+"/x.git")
	if err == nil || !strings.Contains(errOut, "fatal: remote error: repository server for /x.git did not answer within 300ms") {
		t.Fatalf("git: %v\n%s", err, errOut)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("took %v", took)
	}
	data := waitEvent(t, "upstream_inactivity_timeout")
	if data["upstream"] != silent || data["timeout"] != "300ms" {
		t.Fatalf("event data %v", data)
	}
	if !strings.Contains(c.Logs(), `"msg":"upstream_inactivity_timeout"`) {
		t.Fatalf("inactivity not logged")
	}
}

func TestSOCKS4WithCurl(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is required")
	}
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "through socks4: "+r.URL.Path)
	}))
	defer web.Close()
	_, addr := start(t, cfgSOCKS4, nil)
	out, err := exec.Command("curl", "-sS", "-m", "5", "--socks4", addr, web.URL+"/hello").CombinedOutput()
	if err != nil || string(out) != "through socks4: /hello" {
		t.Fatalf("curl --socks4: %v: %s", err, out)
	}
	// A destination outside allow gets SOCKS4's "rejected" reply, which
	// curl reports as such.
	out, err = exec.Command("curl", "-sS", "-m", "5", "--socks4", addr, "http://192.0.2.1/").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "request rejected") {
		t.Fatalf("disallowed destination: %v: %s", err, out)
	}
	// So do an allowed destination nothing listens on, and a SOCKS4a
	// request (a host name for the proxy to resolve, which it does not do).
	out, err = exec.Command("curl", "-sS", "-m", "5", "--socks4", addr, "http://"+e2e.FreePort(t)+"/").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "request rejected") {
		t.Fatalf("failed connect: %v: %s", err, out)
	}
	out, err = exec.Command("curl", "-sS", "-m", "5", "--socks4a", addr, "http://web.invalid/").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "request rejected") {
		t.Fatalf("SOCKS4a host name: %v: %s", err, out)
	}
	// BIND (command 2), which curl never sends.
	ap := netip.MustParseAddrPort(strings.TrimPrefix(web.URL, "http://"))
	req := []byte{4, 2, byte(ap.Port() >> 8), byte(ap.Port())}
	ip := ap.Addr().As4()
	c := dial(t, addr)
	if _, err := c.Write(append(append(req, ip[:]...), 0)); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 8)
	if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0x5b {
		t.Fatalf("BIND: reply %v %v, want rejected (0x5b)", reply, err)
	}
}
