package l4git_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4git"
)

func TestMain(m *testing.M) {
	e2e.ServeGitProxyIfAsked()
	os.Exit(m.Run())
}

// issueCaddyfile is the Caddyfile of the issue, as written; the test only
// replaces its addresses with free ports.
const issueCaddyfile = `{
	layer4 {
		127.0.0.1:9419 {
			@pushes git service receive-pack
			route @pushes {
				git {
					error "pushes go to git.example.com, not the mirror"
				}
			}
			@alice git repo /alice/*
			route @alice {
				git {
					rewrite /srv{l4.git.repo}
					to 127.0.0.1:9418
				}
			}
			@known git host mirror.local
			route @known {
				git {
					to 127.0.0.1:9420 127.0.0.1:9421
					lb_policy ip_hash
				}
			}
			@other git
			route @other {
				git {
					error "no such repository: {l4.git.repo}"
				}
			}
		}
	}
}
`

type world struct {
	proxy   string // the Caddy listener
	main    *e2e.GitDaemon
	mirrors [2]*e2e.GitDaemon
	head    string // main of every test repository
	caddy   *e2e.Caddy
}

// startWorld starts three git daemons and Caddy with the issue's Caddyfile:
// 9418 serves srv/alice/proj.git; 9420 and 9421 serve shared.git.
func startWorld(t *testing.T) *world {
	e2e.RequireGit(t)
	w := &world{}
	base := t.TempDir()
	w.head = e2e.MakeBareRepo(t, filepath.Join(base, "srv", "alice", "proj.git"), 5)
	w.main = e2e.StartGitDaemon(t, base)
	for i := range w.mirrors {
		mb := t.TempDir()
		copyRepo(t, filepath.Join(base, "srv", "alice", "proj.git"), filepath.Join(mb, "shared.git"))
		w.mirrors[i] = e2e.StartGitDaemon(t, mb)
	}
	w.proxy = e2e.FreePort(t)
	cf := strings.NewReplacer("127.0.0.1:9419", w.proxy, "127.0.0.1:9418", w.main.Addr,
		"127.0.0.1:9420", w.mirrors[0].Addr, "127.0.0.1:9421", w.mirrors[1].Addr).Replace(issueCaddyfile)
	w.caddy = e2e.StartCaddyfile(t, cf)
	return w
}

func copyRepo(t *testing.T, from, to string) {
	t.Helper()
	e2e.MustGit(t, t.TempDir(), "clone", "-q", "--bare", from, to)
}

func TestCloneIsRewritten(t *testing.T) {
	w := startWorld(t)
	for _, v := range []string{"0", "1", "2"} {
		dir := t.TempDir()
		e2e.MustGit(t, dir, "-c", "protocol.version="+v, "clone", "-q", "git://"+w.proxy+"/alice/proj.git", "c")
		got := strings.TrimSpace(e2e.MustGit(t, filepath.Join(dir, "c"), "rev-parse", "HEAD"))
		if got != w.head {
			t.Fatalf("protocol v%s: cloned HEAD %s, want %s", v, got, w.head)
		}
		e2e.MustGit(t, filepath.Join(dir, "c"), "fsck", "--strict")
	}
	// The daemon has no /alice/proj.git: only the rewritten path exists.
	if _, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+w.main.Addr+"/alice/proj.git"); err == nil {
		t.Fatalf("the daemon serves the unrewritten path too; the test proves nothing (%s)", errOut)
	}
}

func TestLsRemoteFetchArchive(t *testing.T) {
	w := startWorld(t)
	url := "git://" + w.proxy + "/alice/proj.git"
	if out := e2e.MustGit(t, t.TempDir(), "ls-remote", url); !strings.Contains(out, w.head+"\trefs/heads/main") {
		t.Fatalf("ls-remote: %s", out)
	}
	dir := t.TempDir()
	e2e.MustGit(t, dir, "init", "-q")
	e2e.MustGit(t, dir, "fetch", "-q", url, "main")
	if got := strings.TrimSpace(e2e.MustGit(t, dir, "rev-parse", "FETCH_HEAD")); got != w.head {
		t.Fatalf("fetch: %s", got)
	}
	// git archive --remote sends its arguments in the request's write: they
	// must be replayed after the rewritten request.
	tar := e2e.MustGit(t, t.TempDir(), "archive", "--remote="+url, "--format=tar", "main", "file3.txt")
	if !strings.Contains(tar, "line 3") {
		t.Fatalf("archive did not carry file3.txt (%d bytes)", len(tar))
	}
}

func TestErrorRoutesReachGitStderr(t *testing.T) {
	w := startWorld(t)
	before := map[string]float64{}
	for _, series := range []string{
		`caddy_layer4_git_requests_total{outcome="error_reply",service="receive-pack"}`,
		`caddy_layer4_git_requests_total{outcome="error_reply",service="upload-pack"}`,
		`caddy_layer4_git_requests_total{outcome="proxied",service="upload-pack"}`,
	} {
		before[series] = w.caddy.MetricValue(t, series)
	}
	work := t.TempDir()
	e2e.MustGit(t, work, "clone", "-q", "git://"+w.proxy+"/alice/proj.git", "c")
	_, errOut, err := e2e.Git(t, filepath.Join(work, "c"), "push", "origin", "HEAD:refs/heads/x")
	if err == nil || !strings.Contains(errOut, "fatal: remote error: pushes go to git.example.com, not the mirror") {
		t.Fatalf("push: %v\n%s", err, errOut)
	}
	_, errOut, err = e2e.Git(t, t.TempDir(), "ls-remote", "git://"+w.proxy+"/bob/tools.git")
	if err == nil || !strings.Contains(errOut, "fatal: remote error: no such repository: /bob/tools.git") {
		t.Fatalf("unknown repo: %v\n%s", err, errOut)
	}
	// The counters ProxyMachine kept in its process title are metrics here
	// (process-wide, so compare with the values before this test).
	for series, want := range map[string]float64{
		`caddy_layer4_git_requests_total{outcome="error_reply",service="receive-pack"}`: 1,
		`caddy_layer4_git_requests_total{outcome="error_reply",service="upload-pack"}`:  1,
		`caddy_layer4_git_requests_total{outcome="proxied",service="upload-pack"}`:      1,
	} {
		if got := w.caddy.MetricValue(t, series) - before[series]; got != want {
			t.Errorf("%s rose by %v, want %v", series, got, want)
		}
	}
	// Every relaying handler serves the relay's buffer metrics.
	if got := w.caddy.MetricValue(t, "caddy_layer4_relay_large_buffers_limit"); got != 64 {
		t.Errorf("caddy_layer4_relay_large_buffers_limit %v, want 64", got)
	}
}

func TestHostRouteWithIPHashAndFailover(t *testing.T) {
	w := startWorld(t)
	args := e2e.GitProxyArgs(t, w.proxy) // host=mirror.local, bytes to the proxy
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		e2e.MustGit(t, dir, append(args, "clone", "-q", "git://mirror.local/shared.git", "c")...)
		if got := strings.TrimSpace(e2e.MustGit(t, filepath.Join(dir, "c"), "rev-parse", "HEAD")); got != w.head {
			t.Fatalf("clone via mirror.local: %s", got)
		}
	}
	// Another host falls to @other.
	_, errOut, err := e2e.Git(t, t.TempDir(), append(args, "ls-remote", "git://elsewhere.local/shared.git")...)
	if err == nil || !strings.Contains(errOut, "no such repository: /shared.git") {
		t.Fatalf("other host: %v\n%s", err, errOut)
	}
}
