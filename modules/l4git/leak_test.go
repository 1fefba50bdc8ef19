package l4git_test

import (
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestManyRequestsLeaveNothing: requests ending every way the handler
// knows — relayed to the daemon, refused with an ERR line, unreachable
// upstream, malformed, a client that hangs up mid-request — leave no
// goroutine behind.
func TestManyRequestsLeaveNothing(t *testing.T) {
	dead := e2e.FreePort(t)
	proxy, _, _ := startSimple(t, e2e.FreePort(t), `
			@refused git repo /refused/*
			route @refused {
				git {
					error "refused: {l4.git.repo}"
				}
			}
			@dead git repo /dead/*
			route @dead {
				git {
					to `+dead+`
				}
			}
			route {
				git {
					to UPSTREAM
				}
			}
`)
	lsRemote := func(repo string) (string, error) {
		_, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+proxy+repo)
		return errOut, err
	}
	if _, err := lsRemote("/team/app.git"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	raw := func(request string, wantReply bool) {
		c, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Error(err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = io.WriteString(c, request)
		if !wantReply {
			return // hang up mid-request
		}
		if got, _ := io.ReadAll(c); !strings.Contains(string(got), "ERR ") {
			t.Errorf("%q: %q, want an ERR line", request, got)
		}
	}
	endings := []func(){
		func() {
			if errOut, err := lsRemote("/team/app.git"); err != nil {
				t.Errorf("relayed: %v %s", err, errOut)
			}
		},
		func() {
			if errOut, _ := lsRemote("/refused/x.git"); !strings.Contains(errOut, "refused: /refused/x.git") {
				t.Errorf("refused: %s", errOut)
			}
		},
		func() {
			if errOut, _ := lsRemote("/dead/x.git"); !strings.Contains(errOut, "unreachable") {
				t.Errorf("unreachable: %s", errOut)
			}
		},
		func() { raw("0010git-frobnicate /x\x00", true) },
		func() { raw("0032git-upload-pack /team/app", false) },
	}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() { defer wg.Done(); endings[i%len(endings)]() }()
	}
	wg.Wait()
	e2e.WaitGoroutines(t, base, 10*time.Second)
}
