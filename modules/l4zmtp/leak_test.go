package l4zmtp_test

import (
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestManySessionsLeaveNothing: sessions ending every way the handlers
// know — a pair through `to` that the client ends, a refusal because no
// worker is reachable, a client held for pair_timeout with no worker
// parked, pairs with a parked pool worker, and that worker dying while
// parked — leave no goroutine behind.
func TestManySessionsLeaveNothing(t *testing.T) {
	requirePyZMQ(t)
	to, dead, held, pool := e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t), e2e.FreePort(t)
	workersAddr := e2e.FreePort(t)
	worker := startWorker(t, "NULL")
	c := e2e.StartCaddyfile(t, strings.NewReplacer("ADDR_TO", to, "ADDR_DEAD", dead, "ADDR_HELD", held,
		"ADDR_POOL", pool, "ADDR_WORKERS", workersAddr, "WORKER", worker, "NOBODY", e2e.FreePort(t)).Replace(`{
	layer4 {
		ADDR_TO {
			@z zmtp
			route @z {
				zmtp {
					to WORKER
				}
			}
		}
		ADDR_DEAD {
			@z zmtp
			route @z {
				zmtp {
					to NOBODY
				}
			}
		}
		ADDR_HELD {
			@z zmtp
			route @z {
				zmtp {
					workers empty
					pair_timeout 200ms
				}
			}
		}
		ADDR_POOL {
			@z zmtp
			route @z {
				zmtp {
					workers pool1
					pair_timeout 5s
				}
			}
		}
		ADDR_WORKERS {
			@z zmtp
			route @z {
				zmtp_workers pool1
			}
		}
	}
}
`))
	if got := client(t, to, "NULL", "100"); got != "ok" {
		t.Fatalf("warm-up: %q", got)
	}
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	var wg sync.WaitGroup
	for i := range 15 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch i % 3 {
			case 0:
				if got := client(t, to, "NULL", "1000"); got != "ok" {
					t.Errorf("through to: %q", got)
				}
			case 1:
				if got := refusalReason(t, dead); got != "no worker reachable" {
					t.Errorf("dead worker: %q", got)
				}
			case 2:
				if got := refusalReason(t, held); got != "no idle NULL worker within 200ms" {
					t.Errorf("held: %q", got)
				}
			}
		}()
	}
	wg.Wait()
	poolWorker := startPeer(t, "poolworker", workersAddr, "NULL")
	waitParked(t, c, 1)
	for range 3 {
		if got := client(t, pool, "NULL", "1000"); got != "ok" {
			t.Fatalf("through the pool: %q", got)
		}
		waitParked(t, c, 1) // the worker comes back after its pair ends
	}
	_ = poolWorker.Process.Kill()
	_ = poolWorker.Wait()
	waitParked(t, c, 0)

	e2e.WaitGoroutines(t, base, 10*time.Second)
}
