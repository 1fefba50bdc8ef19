package l4zmtp_test

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4zmtp"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)

const python = "/usr/bin/python3" // Debian's, with python3-zmq

func requirePyZMQ(t *testing.T) {
	t.Helper()
	if err := exec.Command(python, "-c", "import zmq").Run(); err != nil {
		if e2e.CI() {
			t.Fatalf("python3-zmq is required: %v", err)
		}
		t.Skipf("python3-zmq missing: %v", err)
	}
}

func keypair(t *testing.T) (pub, sec string) {
	out, err := exec.Command(python, "testdata/peer.py", "keypair").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	return f[0], f[1]
}

// startWorker runs a libzmq ROUTER echo worker bound to a free port.
func startWorker(t *testing.T, mech string, keys ...string) string {
	t.Helper()
	addr := e2e.FreePort(t)
	startPeer(t, append([]string{"worker", addr, mech}, keys...)...)
	return addr
}

// startPeer runs testdata/peer.py with args until the test ends, once it
// says it is ready.
func startPeer(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(python, append([]string{"testdata/peer.py"}, args...)...)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("peer %v did not start: %q", args, line)
	}
	return cmd
}

// client runs a libzmq DEALER that sends [hello, size bytes] through addr
// and returns what it printed: ok, timeout or mismatch.
func client(t *testing.T, addr, mech string, args ...string) string {
	t.Helper()
	out, _ := exec.Command(python, append([]string{"testdata/peer.py", "client", addr, mech}, args...)...).Output()
	return strings.TrimSpace(string(out))
}

func proxy(t *testing.T, workers []string, mechanisms ...string) (*e2e.Caddy, string) {
	t.Helper()
	addr := e2e.FreePort(t)
	h := map[string]any{"handler": "zmtp", "to": workers, "lb_policy": "least_conn"}
	if len(mechanisms) > 0 {
		h["mechanisms"] = mechanisms
	}
	c := e2e.StartCaddy(t, e2e.Layer4(addr, map[string]any{
		"match":  []any{map[string]any{"zmtp": map[string]any{}}},
		"handle": []any{h},
	}))
	return c, addr
}

func TestNULLDealerRouterWithAMegabytePart(t *testing.T) {
	requirePyZMQ(t)
	w := startWorker(t, "NULL")
	_, addr := proxy(t, []string{w})
	if got := client(t, addr, "NULL", strconv.Itoa(1<<20)); got != "ok" {
		t.Fatalf("NULL through the proxy: %q", got)
	}
}

func TestCURVEStaysEndToEnd(t *testing.T) {
	requirePyZMQ(t)
	pub, sec := keypair(t)
	w := startWorker(t, "CURVE", sec, pub)
	c, addr := proxy(t, []string{w}, "CURVE", "NULL")
	if got := client(t, addr, "CURVE", pub, strconv.Itoa(1<<20)); got != "ok" {
		t.Fatalf("CURVE through the proxy: %q", got)
	}
	// The proxy has no keys: a client with the wrong server key is paired
	// like any other and fails in the CURVE handshake with the worker.
	wrongPub, _ := keypair(t)
	if got := client(t, addr, "CURVE", wrongPub, "10"); got != "timeout" {
		t.Fatalf("wrong server key: %q, want no answer", got)
	}
	// libzmq reconnects after each failed handshake, so the wrong-key client
	// is paired again and again: what matters is that it was paired at all.
	if n := strings.Count(c.Logs(), `"msg":"zmtp pair"`); n < 2 {
		t.Fatalf("%d pairings logged: the wrong key must fail end to end, not at the proxy", n)
	}
}

func TestPLAINRefusedWhenOnlyCURVE(t *testing.T) {
	requirePyZMQ(t)
	w := startWorker(t, "NULL")
	c, addr := proxy(t, []string{w}, "CURVE")
	if got := client(t, addr, "PLAIN", "10"); got != "timeout" {
		t.Fatalf("PLAIN client: %q, want refused", got)
	}
	if !strings.Contains(c.Logs(), `"mechanism":"PLAIN"`) || strings.Contains(c.Logs(), "plain-secret-pw") {
		t.Fatalf("refusal not logged, or the password leaked:\n%s", c.Logs())
	}
}

func TestLeastConnSpreadsClients(t *testing.T) {
	requirePyZMQ(t)
	r1 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "NULL"))
	r2 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "NULL"))
	_, addr := proxy(t, []string{r1.Addr, r2.Addr})
	for i := 0; i < 6; i++ {
		if got := client(t, addr, "NULL", "100"); got != "ok" {
			t.Fatalf("client %d: %q", i, got)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if a, b := r1.Conns.Load(), r2.Conns.Load(); a+b != 6 || a == 0 || b == 0 {
		t.Fatalf("6 clients over two workers: %d and %d", a, b)
	}
}

func TestKilledWorkerEndsItsPair(t *testing.T) {
	requirePyZMQ(t)
	addr := e2e.FreePort(t)
	worker := startPeer(t, "worker", addr, "NULL")
	c, proxyAddr := proxy(t, []string{addr})
	cmd := exec.Command(python, "testdata/peer.py", "holdclient", proxyAddr, "NULL", "4096")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewReader(out)
	if line, _ := lines.ReadString('\n'); strings.TrimSpace(line) != "ok" {
		t.Fatalf("client: %q", line)
	}
	var pairs []map[string]any
	getPairs := func() {
		code, body := c.Get(t, "/prelude/zmtp/pairs")
		if code != 200 || json.Unmarshal([]byte(body), &pairs) != nil {
			t.Fatalf("pairs: %d %s", code, body)
		}
	}
	getPairs()
	if len(pairs) != 1 || pairs[0]["worker"] != addr || pairs[0]["mechanism"] != "NULL" ||
		pairs[0]["bytes_upstream"].(float64) < 4096 || pairs[0]["bytes_downstream"].(float64) < 4096 {
		t.Fatalf("live pairs: %v", pairs)
	}
	_ = worker.Process.Kill()
	// The proxy closes the client's connection: libzmq reports it.
	disconnected := make(chan string, 1)
	go func() { line, _ := lines.ReadString('\n'); disconnected <- strings.TrimSpace(line) }()
	select {
	case line := <-disconnected:
		if line != "disconnected" {
			t.Fatalf("client after the worker died: %q", line)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client's connection stayed open after its worker died")
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if getPairs(); len(pairs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pair still listed after the worker died: %v", pairs)
		}
	}
}

func TestREQREPBothTopologies(t *testing.T) {
	for _, mech := range []string{"NULL", "CURVE"} {
		t.Run(mech, func(t *testing.T) { reqRepBothTopologies(t, mech) })
	}
}

func reqRepBothTopologies(t *testing.T, mech string) {
	requirePyZMQ(t)
	var keys, serverPub []string
	if mech == "CURVE" {
		pub, sec := keypair(t)
		keys, serverPub = []string{sec, pub}, []string{pub}
	}
	req := func(addr string) string {
		args := append([]string{"testdata/peer.py", "reqclient", addr, mech, "100000"}, serverPub...)
		out, _ := exec.Command(python, args...).Output()
		return strings.TrimSpace(string(out))
	}
	// A REP worker that listens, behind `to`.
	rep := e2e.FreePort(t)
	startPeer(t, append([]string{"repworker", rep, mech, "bind"}, keys...)...)
	front, workersIn, poolFront := e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t)
	cf := strings.NewReplacer("FRONT", front, "REP", rep, "WORKERS", workersIn, "POOL", poolFront).Replace(`{
	layer4 {
		FRONT {
			@zmtp zmtp
			route @zmtp {
				zmtp {
					to REP
				}
			}
		}
		WORKERS {
			@zmtp zmtp
			route @zmtp {
				zmtp_workers reps
			}
		}
		POOL {
			@zmtp zmtp
			route @zmtp {
				zmtp {
					workers reps
					pair_timeout 5s
				}
			}
		}
	}
}
`)
	e2e.StartCaddyfile(t, cf)
	if got := req(front); got != "ok" {
		t.Fatalf("REQ to a listening REP through the proxy: %q", got)
	}
	// A REP worker that connects to the proxy, paired through the pool.
	startPeer(t, append([]string{"repworker", workersIn, mech, "connect"}, keys...)...)
	for i := 0; i < 2; i++ {
		if got := req(poolFront); got != "ok" {
			t.Fatalf("REQ %d to a pooled REP: %q", i, got)
		}
	}
}
