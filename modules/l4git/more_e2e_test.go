package l4git_test

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/git"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// startSimple serves one daemon with /team/app.git behind Caddy with the
// given route block (UPSTREAM is replaced by the daemon's address).
var lastCaddy *e2e.Caddy

func startSimple(t *testing.T, listen, routes string) (proxy string, d *e2e.GitDaemon, head string) {
	e2e.RequireGit(t)
	base := t.TempDir()
	head = e2e.MakeBareRepo(t, filepath.Join(base, "team", "app.git"), 3)
	d = e2e.StartGitDaemon(t, base)
	lastCaddy = startRoutes(t, listen, strings.ReplaceAll(routes, "UPSTREAM", d.Addr))
	return listen, d, head
}

// startRoutes starts Caddy with the given route block on listen.
func startRoutes(t *testing.T, listen, routes string) *e2e.Caddy {
	t.Helper()
	return e2e.StartCaddyfile(t, "{\n\tlayer4 {\n\t\t"+listen+" {\n"+routes+"\t\t}\n\t}\n}\n")
}

func TestPushThroughProxy(t *testing.T) {
	proxy, d, _ := startSimple(t, e2e.FreePort(t), `
			@git git
			route @git {
				git {
					to UPSTREAM
				}
			}
`)
	work := t.TempDir()
	url := "git://" + proxy + "/team/app.git"
	e2e.MustGit(t, work, "clone", "-q", url, "c")
	c := filepath.Join(work, "c")
	e2e.MustGit(t, c, "commit", "-q", "--allow-empty", "-m", "pushed through caddy")
	e2e.MustGit(t, c, "push", "-q", "origin", "HEAD:refs/heads/main")
	want := strings.TrimSpace(e2e.MustGit(t, c, "rev-parse", "HEAD"))
	got := strings.TrimSpace(e2e.MustGit(t, filepath.Join(d.Base, "team", "app.git"), "rev-parse", "main"))
	if got != want {
		t.Fatalf("daemon's main is %s after the push, want %s", got, want)
	}
}

func TestIPv6HostParameter(t *testing.T) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatalf("IPv6 loopback: %v", err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	proxy, _, head := startSimple(t, addr, `
			@v6 git host ::1
			route @v6 {
				git {
					to UPSTREAM
				}
			}
			route {
				git {
					error "not the IPv6 route"
				}
			}
`)
	out := e2e.MustGit(t, t.TempDir(), "ls-remote", "git://"+proxy+"/team/app.git")
	if !strings.Contains(out, head) {
		t.Fatalf("ls-remote over [::1]: %s", out)
	}
}

func TestRefusedRewriteUnreachableAndMalformed(t *testing.T) {
	dead := e2e.FreePort(t)
	proxy, _, _ := startSimple(t, e2e.FreePort(t), `
			@up git repo /up/*
			route @up {
				git {
					rewrite /srv/{l4.git.owner}/../../etc
					to UPSTREAM
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
	_, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+proxy+"/up/x.git")
	if err == nil || !strings.Contains(errOut, `fatal: remote error: cannot route /up/x.git: rewritten path "/srv/up/../../etc" has a ".." segment`) {
		t.Fatalf("refused rewrite: %v\n%s", err, errOut)
	}
	_, errOut, err = e2e.Git(t, t.TempDir(), "ls-remote", "git://"+proxy+"/dead/x.git")
	if err == nil || !strings.Contains(errOut, "fatal: remote error: repository server for /dead/x.git is unreachable") {
		t.Fatalf("unreachable: %v\n%s", err, errOut)
	}
	// Without a matcher in front, the handler itself reads a bad request:
	// it answers with ERR rather than dropping the connection.
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, _ = c.Write([]byte("0010git-frobnicate /x\x00"))
	got, _ := io.ReadAll(c)
	if want := string(git.AppendError(nil, "malformed git:// request")); string(got) != want {
		t.Fatalf("malformed request got %q, want %q", got, want)
	}
}

// TestRequestArrivingByteByByte: the matcher asks for more until the
// pkt-line is complete, however it is split.
func TestRequestArrivingByteByByte(t *testing.T) {
	proxy, _, head := startSimple(t, e2e.FreePort(t), `
			@git git repo /team/*
			route @git {
				git {
					to UPSTREAM
				}
			}
`)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	payload := "git-upload-pack /team/app.git\x00host=localhost\x00"
	req := []byte(fmt.Sprintf("%04x%s", 4+len(payload), payload))
	for _, b := range req {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Protocol v0: the daemon answers with the ref advertisement.
	buf := make([]byte, 4096)
	n, err := io.ReadAtLeast(c, buf, 50)
	if err != nil || !strings.Contains(string(buf[:n]), head) {
		t.Fatalf("advertisement: %q, %v\n%s", buf[:n], err, lastCaddy.Logs())
	}
}

// TestMissingRepositoryAsDirect: git daemon, as it runs by default,
// answers a request for a repository it does not serve with a terse ERR
// line ("access denied or repository not exported"). Through the proxy the
// client sees exactly what it sees directly, with first_byte_timeout or
// without, and the request counts as proxied: the daemon was reached and
// answered.
func TestMissingRepositoryAsDirect(t *testing.T) {
	d := e2e.StartTerseGitDaemon(t, t.TempDir())
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			@waits git repo /waits/*
			route @waits {
				git {
					to `+d.Addr+`
					first_byte_timeout 5s
				}
			}
			@git git
			route @git {
				git {
					to `+d.Addr+`
				}
			}
`)
	const proxied = `caddy_layer4_git_requests_total{outcome="proxied",service="upload-pack"}`
	before := c.MetricValue(t, proxied) // the counters outlive a test's Caddy
	for _, path := range []string{"/missing.git", "/waits/missing.git"} {
		_, direct, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+d.Addr+path)
		if err == nil {
			t.Fatal("the daemon served a missing repository")
		}
		_, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", "git://"+proxy+path)
		if err == nil || strings.ReplaceAll(errOut, proxy, d.Addr) != direct {
			t.Fatalf("%s through the proxy: %v\n%s\nwant what git says directly:\n%s", path, err, errOut, direct)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); c.MetricValue(t, proxied) != before+2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s went from %v to %v, want 2 more", proxied, before, c.MetricValue(t, proxied))
		}
	}
}

// TestRelayedBytesMetric: after a clone, caddy_layer4_git_relayed_bytes_total
// has grown each way by exactly the bytes that crossed between the proxy
// and the daemon (counted by a forwarder in front of the daemon): the
// request and what followed it upstream, the whole answer downstream.
func TestRelayedBytesMetric(t *testing.T) {
	e2e.RequireGit(t)
	base := t.TempDir()
	e2e.MakeBareRepo(t, filepath.Join(base, "app.git"), 3)
	d := e2e.StartGitDaemon(t, base)
	counted := e2e.StartRelay(t, "127.0.0.1:0", d.Addr)
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			@git git
			route @git {
				git {
					to `+counted.Addr+`
				}
			}
`)
	const upSeries = `caddy_layer4_git_relayed_bytes_total{direction="upstream",service="upload-pack"}`
	const downSeries = `caddy_layer4_git_relayed_bytes_total{direction="downstream",service="upload-pack"}`
	upBefore, downBefore := c.MetricValue(t, upSeries), c.MetricValue(t, downSeries) // counters outlive a test's Caddy
	e2e.MustGit(t, t.TempDir(), "clone", "-q", "git://"+proxy+"/app.git", "c")
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		gotUp, gotDown := c.MetricValue(t, upSeries)-upBefore, c.MetricValue(t, downSeries)-downBefore
		up, down := counted.ToTarget.Load(), counted.FromTarget.Load()
		if gotUp == float64(up) && gotDown == float64(down) && gotDown > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics grew by %v up, %v down; the daemon's side saw %d up, %d down", gotUp, gotDown, up, down)
		}
	}
}
