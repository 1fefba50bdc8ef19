package l4foo_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestKill9KeepsTotals: run traffic, kill -9 Caddy, start it again on the
// same recovery file, and find the totals the clients counted. A corrupt
// recovery file is reported and ignored.
func TestKill9KeepsTotals(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	srv := footest.StartServer(t, footest.ServerOptions{})
	recovery := filepath.Join(t.TempDir(), "foo-default.json")
	addr := e2e.FreePort(t)
	c := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, recovery))
	var want footest.Counts
	for i := 0; i < 5; i++ {
		got, err := footest.Run(addr, footest.ClientOptions{Requests: 100, Pipelined: i%2 == 1})
		if err != nil {
			t.Fatal(err)
		}
		want.Req, want.Ack, want.Nak = want.Req+got.Req, want.Ack+got.Ack, want.Nak+got.Nak
	}
	waitIdle(t, c)
	// SIGUSR2 writes the stats as one JSON line to stdout.
	c.Signal(t, syscall.SIGUSR2)
	var dumped foo.Report
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if line, _, ok := strings.Cut(c.Stdout(), "\n"); ok {
			if err := json.Unmarshal([]byte(line), &dumped); err != nil {
				t.Fatalf("SIGUSR2 line %q: %v", line, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing on stdout after SIGUSR2")
		}
	}
	if int(dumped.MsgReq) != want.Req {
		t.Fatalf("SIGUSR2 dump says %d requests, clients sent %d", dumped.MsgReq, want.Req)
	}
	time.Sleep(1100 * time.Millisecond) // saves happen at least once a second
	c.Signal(t, syscall.SIGKILL)
	if !c.Exited(5 * time.Second) {
		t.Fatal("kill -9 did not end caddy")
	}
	c2 := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, recovery))
	r := stats(t, c2)
	if int(r.MsgReq) != want.Req || int(r.MsgAck) != want.Ack || int(r.MsgNak) != want.Nak {
		t.Fatalf("after kill -9 and restart: %+v; clients counted %+v", r, want)
	}
	if r.RequestRate10s == 0 {
		t.Fatalf("rate window younger than 10 s not restored: %+v", r)
	}
	// A torn file (what the reference left behind) is ignored, not fatal.
	c2.Signal(t, syscall.SIGKILL)
	c2.Exited(5 * time.Second)
	if err := os.WriteFile(recovery, []byte(`{"version":1,"msg_req":`), 0o600); err != nil {
		t.Fatal(err)
	}
	c3 := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, recovery))
	if r := stats(t, c3); r.MsgReq != 0 {
		t.Fatalf("corrupt file restored something: %+v", r)
	}
	if !strings.Contains(c3.Logs(), "ignoring foo recovery file") {
		t.Fatalf("corrupt recovery file not reported:\n%s", c3.Logs())
	}
}
