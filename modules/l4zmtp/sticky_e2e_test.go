package l4zmtp_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/caddyprelude/prelude/internal/e2e"
)

func TestStickyIdentityWithFallback(t *testing.T) {
	requirePyZMQ(t)
	r1 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "NULL"))
	r2 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "NULL"))
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, e2e.Layer4(addr, map[string]any{
		"match": []any{map[string]any{"zmtp": map[string]any{}}},
		"handle": []any{map[string]any{"handler": "zmtp", "to": []string{r1.Addr, r2.Addr},
			"inspect_metadata": true, "sticky": "identity", "fail_duration": "1ms"}},
	}))
	idclient := func(id string) string {
		out, _ := exec.Command(python, "testdata/peer.py", "idclient", addr, "NULL", id, "1000").Output()
		return strings.TrimSpace(string(out))
	}
	for i := 0; i < 3; i++ {
		if got := idclient("client-A"); got != "ok" {
			t.Fatalf("client-A %d: %q", i, got)
		}
	}
	a, b := r1.Conns.Load(), r2.Conns.Load()
	if !(a == 3 && b == 0 || a == 0 && b == 3) {
		t.Fatalf("client-A spread over workers: %d and %d, want one worker", a, b)
	}
	if !strings.Contains(c.Logs(), `"identity":"client-A","socket_type":"DEALER"`) {
		t.Fatalf("identity and socket type not read:\n%s", c.Logs())
	}
	// The sticky worker goes away: client-A falls back to the other one.
	sticky, other := r1, r2
	if b == 3 {
		sticky, other = r2, r1
	}
	sticky.Close()
	if got := idclient("client-A"); got != "ok" || other.Conns.Load() != 1 {
		t.Fatalf("fallback: %q, other worker saw %d", got, other.Conns.Load())
	}
}

func TestInspectPLAINUser(t *testing.T) {
	requirePyZMQ(t)
	w := startWorker(t, "PLAIN")
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, e2e.Layer4(addr, map[string]any{
		"match":  []any{map[string]any{"zmtp": map[string]any{}}},
		"handle": []any{map[string]any{"handler": "zmtp", "to": []string{w}, "inspect_metadata": true}},
	}))
	c.NoLeak("plain-secret-pw")
	if got := client(t, addr, "PLAIN", "1000"); got != "ok" {
		t.Fatalf("PLAIN through an inspecting proxy: %q\n%s", got, c.Logs())
	}
	if !strings.Contains(c.Logs(), `"user":"alice"`) {
		t.Fatalf("PLAIN user not read:\n%s", c.Logs())
	}
}
