package l4zmtp_test

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/zmtp"
)

// refusalReason connects with a NULL greeting and returns the reason of the
// ERROR command the proxy answers with, after checking the greeting it
// completes and that the connection then ends cleanly.
func refusalReason(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	g := append(zmtp.Signature(), 3, 1)
	g = append(g, "NULL"...)
	g = append(g, make([]byte, zmtp.GreetingLen-len(g))...)
	if _, err := c.Write(g); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("after the refusal: %v (want a clean close, not a reset)", err)
	}
	pg, err := zmtp.ParseGreeting(got)
	if err != nil || pg.Mechanism != "NULL" || pg.Minor != 1 {
		t.Fatalf("greeting %+v %v in %q", pg, err, got)
	}
	f, n, err := zmtp.ParseFrame(got[zmtp.GreetingLen:], 1<<10)
	if err != nil || n != len(got)-zmtp.GreetingLen || !f.IsCommand() {
		t.Fatalf("after the greeting: %q, %v", got[zmtp.GreetingLen:], err)
	}
	cmd, err := zmtp.ParseCommand(f.Body)
	if err != nil || cmd.Name != "ERROR" || len(cmd.Data) < 1 {
		t.Fatalf("command %+v %v", cmd, err)
	}
	return string(cmd.Data[1:])
}

func TestRefusalsAreZMTPErrors(t *testing.T) {
	dead := e2e.FreePort(t)
	addr := e2e.FreePort(t)
	pool := e2e.FreePort(t)
	curveOnly := e2e.FreePort(t)
	e2e.StartCaddyfile(t, strings.NewReplacer("ADDR_TO", addr, "ADDR_POOL", pool, "ADDR_CURVE", curveOnly, "ADDR_DEAD", dead).Replace(`{
	layer4 {
		ADDR_TO {
			@z zmtp
			route @z {
				zmtp {
					to ADDR_DEAD
				}
			}
		}
		ADDR_POOL {
			@z zmtp
			route @z {
				zmtp {
					workers empty
					pair_timeout 200ms
				}
			}
		}
		ADDR_CURVE {
			@z zmtp
			route @z {
				zmtp {
					mechanism CURVE
					to ADDR_DEAD
				}
			}
		}
	}
}
`))
	for listen, want := range map[string]string{
		addr:      "no worker reachable",
		pool:      "no idle NULL worker within 200ms",
		curveOnly: "mechanism NULL is not accepted here",
	} {
		if got := refusalReason(t, listen); got != want {
			t.Errorf("%s: ERROR %q, want %q", listen, got, want)
		}
	}
}
