package l4foo_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
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

// TestKill9MidTrafficKeepsTotalsWithinASecond: while a client keeps
// sending, the recovery file is replaced at least once a second; kill -9
// Caddy at a moment unrelated to those saves, restart it on the same file,
// and find the totals within one second's worth of what the client had
// counted when Caddy died. A save waits for fsync: only a save Caddy
// logged as slow may stretch that second, by as long as it took.
func TestKill9MidTrafficKeepsTotalsWithinASecond(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	srv := footest.StartServer(t, footest.ServerOptions{})
	recovery := filepath.Join(t.TempDir(), "foo-default.json")
	addr := e2e.FreePort(t)
	c := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, recovery))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// One request at a time: the client has its answer for every request
	// but the one in flight. answered[i] is when request i+1 was answered.
	var (
		mu       sync.Mutex
		answered []time.Time
	)
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		r := bufio.NewReader(conn)
		for seq := 1; ; seq++ {
			if _, err := fmt.Fprintf(conn, "REQ %d payload\n", seq); err != nil {
				return
			}
			if _, err := r.ReadSlice('\n'); err != nil {
				return
			}
			mu.Lock()
			answered = append(answered, time.Now())
			mu.Unlock()
		}
	}()
	// Under this load the file is replaced at least once a second.
	var saves []time.Time
	watchStart := time.Now()
	for time.Since(watchStart) < 2500*time.Millisecond {
		if fi, err := os.Stat(recovery); err == nil && fi.ModTime().After(watchStart) &&
			(len(saves) == 0 || fi.ModTime().After(saves[len(saves)-1])) {
			saves = append(saves, fi.ModTime())
		}
		time.Sleep(10 * time.Millisecond)
	}
	saves = append(append([]time.Time{watchStart}, saves...), time.Now())
	// Kill at a moment unrelated to the saves' rhythm.
	time.Sleep(time.Duration(rand.Int64N(int64(time.Second))))
	killed := time.Now()
	c.Signal(t, syscall.SIGKILL)
	if !c.Exited(5 * time.Second) {
		t.Fatal("kill -9 did not end caddy")
	}
	<-clientDone
	// A save waits for the disk: one that took longer than the save
	// interval is logged, and only such a save may stretch the second.
	slowest := slowestSave(t, c.Logs())
	allowed := max(time.Second, slowest+200*time.Millisecond)
	for i := 1; i < len(saves); i++ {
		if gap := saves[i].Sub(saves[i-1]); gap > allowed {
			t.Fatalf("%v without a save under load (slowest save logged: %v), want at most a second", gap, slowest)
		}
	}
	mu.Lock()
	total := len(answered)
	secondBefore := sort.Search(total, func(i int) bool { return answered[i].After(killed.Add(-allowed)) })
	mu.Unlock()
	if total-secondBefore < 100 {
		t.Fatalf("only %d requests answered in the last second before the kill: not under load", total-secondBefore)
	}
	c2 := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, recovery))
	r := stats(t, c2)
	// Caddy counts a request when it forwards it and an answer when it
	// forwards it; the client, an answer when it reads it: Caddy may be
	// one request and one answer ahead.
	req, answers := int(r.MsgReq), int(r.MsgAck+r.MsgNak)
	t.Logf("client: %d answered, %d in the last %v; restored: %d requests, %d answers; slowest save logged: %v",
		total, total-secondBefore, allowed, req, answers, slowest)
	if req < secondBefore || req > total+1 || answers < secondBefore || answers > total+1 {
		t.Fatalf("restored %d requests and %d answers; the client had %d answered, %d of them over %v before the kill",
			req, answers, total, secondBefore, allowed)
	}
}

// slowestSave is the longest save the log reports as slower than the save
// interval, or 0.
func slowestSave(t *testing.T, logs string) time.Duration {
	var slowest time.Duration
	for _, l := range strings.Split(logs, "\n") {
		if !strings.Contains(l, `"msg":"slow foo stats save`) {
			continue
		}
		var entry struct{ Took float64 }
		if err := json.Unmarshal([]byte(l), &entry); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		slowest = max(slowest, time.Duration(entry.Took*float64(time.Second)))
	}
	return slowest
}

// TestDefaultRecoveryFile: without `recovery`, a stats set is saved as
// prelude/foo-<name>.json under Caddy's data directory ($XDG_DATA_HOME/caddy
// here) and restored from there after kill -9.
func TestDefaultRecoveryFile(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data) // inherited by the Caddy process
	srv := footest.StartServer(t, footest.ServerOptions{})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, ""))
	got, err := footest.Run(addr, footest.ClientOptions{Requests: 100})
	if err != nil {
		t.Fatal(err)
	}
	waitIdle(t, c)
	path := filepath.Join(data, "caddy", "prelude", "foo-default.json")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var saved struct {
			MsgReq int `json:"msg_req"`
		}
		b, err := os.ReadFile(path)
		if err == nil && json.Unmarshal(b, &saved) == nil && saved.MsgReq == got.Req {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v %q, want msg_req %d", path, err, b, got.Req)
		}
	}
	c.Signal(t, syscall.SIGKILL)
	if !c.Exited(5 * time.Second) {
		t.Fatal("kill -9 did not end caddy")
	}
	c2 := e2e.StartCaddyProcess(t, bin, "", config(addr, srv.Addr, ""))
	if r := stats(t, c2); int(r.MsgReq) != got.Req || int(r.MsgAck) != got.Ack || int(r.MsgNak) != got.Nak {
		t.Fatalf("restored from the default file: %+v; the client counted %+v", r, got)
	}
}
