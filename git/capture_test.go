package git

import (
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata captures from the real git client")

// captureCase is a git command whose first write is captured.
type captureCase struct {
	name   string
	listen string   // where the capturing listener binds
	args   []string // git arguments; %s is replaced by the URL host part
}

var captureCases = []captureCase{
	{"clone-v2", "127.0.0.1:0", []string{"clone", "git://%s/repo.git", "dst"}},
	{"ls-remote-v1", "127.0.0.1:0", []string{"-c", "protocol.version=1", "ls-remote", "git://%s/repo.git"}},
	{"ls-remote-v0", "127.0.0.1:0", []string{"-c", "protocol.version=0", "ls-remote", "git://%s/repo.git"}},
	{"push", "127.0.0.1:0", []string{"push", "git://%s/alice/proj.git", "HEAD:main"}},
	{"archive", "127.0.0.1:0", []string{"archive", "--remote=git://%s/repo.git", "HEAD"}},
	{"ipv6", "[::1]:0", []string{"ls-remote", "git://%s/repo.git"}},
}

// captureFirstWrite runs git against a listener that records what the
// client sends before any answer, then hangs up.
func captureFirstWrite(t testing.TB, c captureCase) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer conn.Close()
		_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		b, _ := io.ReadAll(conn) // the client's whole first flight
		got <- b
	}()
	dir := t.TempDir()
	if c.name == "push" {
		run(t, dir, "init", "-q", "-b", "main")
		run(t, dir, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x")
	}
	args := make([]string, len(c.args))
	for i, a := range c.args {
		args[i] = strings.ReplaceAll(a, "%s", ln.Addr().String())
	}
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	_ = cmd.Run() // fails: the listener hangs up
	return <-got
}

func run(t testing.TB, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
}

// loadCaptures returns the first writes stored in testdata (rewritten from
// the real git client with -update).
func loadCaptures(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, c := range captureCases {
		f := filepath.Join("testdata", c.name+".bin")
		if *update {
			if err := os.WriteFile(f, captureFirstWrite(t, c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatalf("%v (go test ./git -run TestCaptures -update rewrites it)", err)
		}
		out[c.name] = b
	}
	return out
}

// TestCapturesMatchLiveGit: the stored captures are what this machine's git
// sends (the request part: the host port differs between runs).
func TestCapturesMatchLiveGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Fatal("git is required (make test installs it)")
	}
	stored := loadCaptures(t)
	for _, c := range captureCases {
		live := captureFirstWrite(t, c)
		a, _, err1 := ParseRequest(live)
		b, _, err2 := ParseRequest(stored[c.name])
		if err1 != nil || err2 != nil {
			t.Fatalf("%s: live %v, stored %v", c.name, err1, err2)
		}
		if a.Service != b.Service || a.Path != b.Path || a.Version != b.Version || a.Host != b.Host {
			t.Errorf("%s: live %+v, stored %+v", c.name, a, b)
		}
	}
}
