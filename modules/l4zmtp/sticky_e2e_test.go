package l4zmtp_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
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

// TestStickyIdentityWithPooledWorkers: workers that connect to the proxy
// (two hosts, 127.0.0.2 and 127.0.0.3) — a client identity keeps reaching
// the same worker host, and the next one in its ranking when that worker
// is gone.
func TestStickyIdentityWithPooledWorkers(t *testing.T) {
	requirePyZMQ(t)
	workersIn, clientsIn := e2e.FreePort(t), e2e.FreePort(t)
	c := e2e.StartCaddy(t, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"workers": map[string]any{"listen": []string{workersIn}, "routes": []any{map[string]any{
			"match":  []any{map[string]any{"zmtp": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "zmtp_workers", "pool": "sticky"}},
		}}},
		"clients": map[string]any{"listen": []string{clientsIn}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"zmtp": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "zmtp", "workers": "sticky", "pair_timeout": "5s",
				"inspect_metadata": true, "sticky": "identity"}},
		}}},
	}}}})
	hosts := map[string]*exec.Cmd{
		"127.0.0.2": startPeer(t, "poolworkerfrom", workersIn, "NULL", "127.0.0.2"),
		"127.0.0.3": startPeer(t, "poolworkerfrom", workersIn, "NULL", "127.0.0.3"),
	}
	waitParked(t, c, 2)
	idclient := func(id string) string {
		out, _ := exec.Command(python, "testdata/peer.py", "idclient", clientsIn, "NULL", id, "1000").Output()
		return strings.TrimSpace(string(out))
	}
	pairedWith := func() []string {
		var out []string
		for _, l := range strings.Split(c.Logs(), "\n") {
			if strings.Contains(l, `"msg":"zmtp pair"`) {
				_, rest, _ := strings.Cut(l, `"upstream":"`)
				host, _, _ := strings.Cut(rest, ":")
				out = append(out, host)
			}
		}
		return out
	}
	for i := range 3 {
		if got := idclient("client-A"); got != "ok" {
			t.Fatalf("client-A %d: %q", i, got)
		}
	}
	seen := pairedWith()
	if len(seen) != 3 || seen[0] != seen[1] || seen[1] != seen[2] {
		t.Fatalf("client-A paired with %v, want one worker host three times", seen)
	}
	sticky := seen[0]
	_ = hosts[sticky].Process.Kill()
	_ = hosts[sticky].Wait()
	if got := idclient("client-A"); got != "ok" {
		t.Fatalf("client-A after its worker died: %q", got)
	}
	if last := pairedWith(); last[len(last)-1] == sticky {
		t.Fatalf("client-A paired with the dead worker host %s: %v", sticky, last)
	}
}

// waitParked waits until n workers are parked in the pools.
func waitParked(t *testing.T, c *e2e.Caddy, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		_, body := c.Get(t, "/prelude/zmtp/workers")
		if strings.Count(body, `"NULL":`) > 0 && strings.Contains(body, fmt.Sprintf(`"NULL":%d`, n)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers not parked: %s", body)
		}
	}
}

// TestStickyByAddressUnderCURVE: CURVE hides a client's identity from the
// proxy, so both sticky modes key CURVE clients by address. Each source
// address keeps reaching one worker, addresses spread over both workers,
// and an address whose worker is gone falls back to the other.
func TestStickyByAddressUnderCURVE(t *testing.T) {
	requirePyZMQ(t)
	for _, mode := range []string{"remote_ip", "identity"} {
		t.Run(mode, func(t *testing.T) {
			pub, sec := keypair(t)
			r1 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "CURVE", sec, pub))
			r2 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "CURVE", sec, pub))
			addr := e2e.FreePort(t)
			h := map[string]any{"handler": "zmtp", "to": []string{r1.Addr, r2.Addr},
				"sticky": mode, "fail_duration": "1ms"}
			if mode == "identity" {
				h["inspect_metadata"] = true
			}
			e2e.StartCaddy(t, e2e.Layer4(addr, map[string]any{
				"match":  []any{map[string]any{"zmtp": map[string]any{}}},
				"handle": []any{h},
			}))
			// workerOf sends three clients from src and returns the relay
			// all three reached.
			workerOf := func(src string) *e2e.Relay {
				t.Helper()
				a, b := r1.Conns.Load(), r2.Conns.Load()
				for i := range 3 {
					out, _ := exec.Command(python, "testdata/peer.py", "clientfrom", addr, "CURVE", src, pub, "1000").Output()
					if got := strings.TrimSpace(string(out)); got != "ok" {
						t.Fatalf("client %d from %s: %q", i, src, got)
					}
				}
				switch da, db := r1.Conns.Load()-a, r2.Conns.Load()-b; {
				case da == 3 && db == 0:
					return r1
				case da == 0 && db == 3:
					return r2
				default:
					t.Fatalf("3 clients from %s spread over the workers: %d and %d", src, da, db)
				}
				return nil
			}
			first := workerOf("127.0.0.2")
			var other string // an address that sticks to the other worker
			for i := 3; i < 40 && other == ""; i++ {
				if src := fmt.Sprintf("127.0.0.%d", i); workerOf(src) != first {
					other = src
				}
			}
			if other == "" {
				t.Fatal("every source address reached the same worker")
			}
			first.Close()
			if w := workerOf("127.0.0.2"); w == first {
				t.Fatal("127.0.0.2 still reached its closed worker")
			}
		})
	}
}
