package l4zmtp_test

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// issueCaddyfile is the issue's Caddyfile as written; the test replaces
// its addresses with free ports.
const issueCaddyfile = `{
	layer4 {
		127.0.0.1:5555 {
			@zmtp zmtp
			route @zmtp {
				zmtp {
					mechanism CURVE NULL
					to 127.0.0.1:6000 127.0.0.1:6001
					lb_policy least_conn
				}
			}
		}
		127.0.0.1:5556 {
			@zmtp zmtp
			route @zmtp {
				zmtp_workers pool1
			}
		}
		127.0.0.1:5557 {
			@zmtp zmtp
			route @zmtp {
				zmtp {
					workers pool1
					pair_timeout 5s
				}
			}
		}
	}
}
`

func TestIssueCaddyfileBothTopologies(t *testing.T) {
	requirePyZMQ(t)
	pub, sec := keypair(t)
	w6000, w6001 := startWorker(t, "NULL"), startWorker(t, "CURVE", sec, pub)
	front, workersIn, poolFront := e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t)
	cf := strings.NewReplacer("127.0.0.1:5555", front, "127.0.0.1:5556", workersIn, "127.0.0.1:5557", poolFront,
		"127.0.0.1:6000", w6000, "127.0.0.1:6001", w6001).Replace(issueCaddyfile)
	c := e2e.StartCaddyfile(t, cf)

	// Workers that connect to the proxy: one NULL, one CURVE.
	startPoolWorker(t, workersIn, "NULL")
	startPoolWorker(t, workersIn, "CURVE", sec, pub)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, body := c.Get(t, "/prelude/zmtp/workers")
		if strings.Contains(body, `"pool":"pool1","parked":{"CURVE":1,"NULL":1},"busy":0`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/prelude/zmtp/workers: %s", body)
		}
	}
	for i := 0; i < 3; i++ { // each pair ends with the client; the worker reconnects and parks again
		if got := client(t, poolFront, "NULL", "65536"); got != "ok" {
			t.Fatalf("NULL client %d via the pool: %q\n%s", i, got, c.Logs())
		}
		if got := client(t, poolFront, "CURVE", pub, "65536"); got != "ok" {
			t.Fatalf("CURVE client %d via the pool: %q", i, got)
		}
	}
	// No PLAIN worker is parked: the client is held, then closed.
	start := time.Now()
	if got := client(t, poolFront, "PLAIN", "10"); got != "timeout" {
		t.Fatalf("PLAIN client with no PLAIN worker: %q", got)
	}
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("PLAIN client dropped after %v, want it held", took)
	}
	// The listening workers behind least_conn: the NULL client reaches the
	// NULL worker or the mechanism mismatch closes it; CURVE likewise.
	okNull, okCurve := false, false
	for i := 0; i < 4; i++ {
		okNull = okNull || client(t, front, "NULL", "100") == "ok"
		okCurve = okCurve || client(t, front, "CURVE", pub, "100") == "ok"
	}
	if !okNull || !okCurve {
		t.Fatalf("workers-listen route: NULL ok %v, CURVE ok %v", okNull, okCurve)
	}
}

// startPoolWorker runs a libzmq ROUTER that connects to a zmtp_workers
// listener and echoes.
func startPoolWorker(t *testing.T, addr, mech string, keys ...string) {
	t.Helper()
	startPeer(t, append([]string{"poolworker", addr, mech}, keys...)...)
}
