package l4git_test

import (
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)

// routeService is a routing service over real HTTP on loopback: GET
// /route/<owner> answers the body set for the owner, 404 for others, and
// counts the requests per owner. Its behaviour can be switched to the
// faults a real one shows: down, slow.
type routeService struct {
	mu     sync.Mutex
	bodies map[string]string
	asked  map[string]int
	slow   time.Duration
	ln     net.Listener
	srv    *http.Server
	Addr   string
}

func startRouteService(t *testing.T) *routeService {
	t.Helper()
	s := &routeService{bodies: map[string]string{}, asked: map[string]int{}, Addr: e2e.FreePort(t)}
	s.start(t)
	t.Cleanup(s.stop)
	return s
}

func (s *routeService) start(t *testing.T) {
	ln, err := net.Listen("tcp", s.Addr)
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serve)}
	go s.srv.Serve(ln)
}

func (s *routeService) stop() { _ = s.srv.Close() }

func (s *routeService) serve(w http.ResponseWriter, r *http.Request) {
	owner := strings.TrimPrefix(r.URL.Path, "/route/")
	s.mu.Lock()
	s.asked[owner]++
	body, ok := s.bodies[owner]
	slow := s.slow
	s.mu.Unlock()
	if slow > 0 {
		select {
		case <-time.After(slow):
		case <-r.Context().Done():
			return
		}
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write([]byte(body))
}

func (s *routeService) set(owner, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bodies[owner] = body
}

func (s *routeService) requests(owner string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[owner]
}

func (s *routeService) setSlow(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slow = d
}

// TestLookupHTTPRoutesPerOwner: git clients routed per owner by an HTTP
// routing service; one request per key per TTL however many clients; an
// answer may refuse; and every fault of the service ends in a served
// stale answer or git's ERR within the timeout, never a hang or a dial to
// an address from a bad answer.
func TestLookupHTTPRoutesPerOwner(t *testing.T) {
	e2e.RequireGit(t)
	baseA, baseB := t.TempDir(), t.TempDir()
	aliceOnA := e2e.MakeBareRepo(t, filepath.Join(baseA, "alice", "proj.git"), 3)
	bobOnB := e2e.MakeBareRepo(t, filepath.Join(baseB, "bob", "app.git"), 4)
	a, b := e2e.StartGitDaemon(t, baseA), e2e.StartGitDaemon(t, baseB)
	svc := startRouteService(t)
	svc.set("alice", `{"to": ["`+a.Addr+`"]}`)
	svc.set("bob", b.Addr)
	svc.set("mallory", `{"refuse": "account suspended for abuse"}`)
	svc.set("garbage", `<html>502 Bad Gateway</html>`)
	svc.set("empty", ``)
	svc.set("huge", strings.Repeat(a.Addr+",", 20000))
	svc.set("badport", `{"to": ["127.0.0.1:0"]}`)
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			route {
				git {
					lookup http http://`+svc.Addr+`/route/{key} {
						key {l4.git.owner}
						ttl 1m
						negative_ttl 1m
						timeout 300ms
						stale 1h
					}
				}
			}
`)
	url := func(repo string) string { return "git://" + proxy + repo }
	for range 5 {
		if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnA {
			t.Fatalf("alice: HEAD %q (%s), want %s from server A", head, errOut, aliceOnA)
		}
	}
	if head, errOut := lsHead(t, url("/bob/app.git")); head != bobOnB {
		t.Fatalf("bob: HEAD %q (%s), want %s from server B", head, errOut, bobOnB)
	}
	if n := svc.requests("alice"); n != 1 {
		t.Fatalf("the service was asked %d times for alice, want once per TTL", n)
	}
	checkLookupAPI(t, c, "alice", a.Addr)
	if v := c.MetricValue(t, `caddy_layer4_lookup_results_total{lookup="git",result="hit"}`); v != 6 {
		t.Errorf("hits metric %v, want 6", v)
	}
	for repo, want := range map[string]string{
		"/carol/x.git":   `no route for repository /carol/x.git (no route for key "carol")`,
		"/mallory/x.git": `access to /mallory/x.git refused: account suspended for abuse`,
		"/garbage/x.git": `no route for repository /garbage/x.git (no route for key "garbage": the route lookup failed)`,
		"/empty/x.git":   `no route for key "empty": the route lookup failed`,
		"/huge/x.git":    `no route for key "huge": the route lookup failed`,
		"/badport/x.git": `no route for key "badport": the route lookup failed`,
	} {
		if _, errOut := lsHead(t, url(repo)); !strings.Contains(errOut, "remote error: ") || !strings.Contains(errOut, want) {
			t.Errorf("%s: %s, want ERR %q", repo, errOut, want)
		}
	}
	if logs := c.Logs(); !strings.Contains(logs, "bad answer from the lookup service") {
		t.Errorf("the log does not say why garbage was refused:\n%s", logs)
	}

	// Slow beyond its timeout: a key never cached gets ERR within the
	// timeout (plus git's own start-up), not a hang.
	svc.setSlow(5 * time.Second)
	start := time.Now()
	_, errOut := lsHead(t, url("/dave/x.git"))
	if took := time.Since(start); took > 2*time.Second || !strings.Contains(errOut, "the route lookup failed") {
		t.Fatalf("slow service: after %v: %s", took, errOut)
	}
	svc.setSlow(0)

	// Down: cached answers are served (here within the TTL; the stale
	// window is covered by the cache's own tests), new keys get ERR.
	svc.stop()
	if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnA {
		t.Fatalf("alice with the service down: %q (%s)", head, errOut)
	}
	if _, errOut := lsHead(t, url("/erin/x.git")); !strings.Contains(errOut, "the route lookup failed") {
		t.Fatalf("a new key with the service down: %s", errOut)
	}
}

// TestLookupRedisRoutesPerOwner: git clients routed per owner by Redis
// strings; a route changed in Redis moves new connections within a
// second though the TTL is an hour (keyspace notifications); a Redis
// restart mid-run keeps serving what was cached and picks up the
// restarted server's table once it is back.
func TestLookupRedisRoutesPerOwner(t *testing.T) {
	e2e.RequireGit(t)
	baseA, baseB := t.TempDir(), t.TempDir()
	aliceOnA := e2e.MakeBareRepo(t, filepath.Join(baseA, "alice", "proj.git"), 3)
	aliceOnB := e2e.MakeBareRepo(t, filepath.Join(baseB, "alice", "proj.git"), 5)
	a, b := e2e.StartGitDaemon(t, baseA), e2e.StartGitDaemon(t, baseB)
	rs := e2e.StartRedis(t, "--requirepass", "gitr0utes")
	set := func(k, v string) { rs.MustDo("SET", "prelude:route:"+k, v) }
	set("alice", a.Addr)
	set("mallory", `{"refuse": "suspended"}`)
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			route {
				git {
					lookup redis redis://:gitr0utes@`+rs.Addr+` {
						key {l4.git.owner}
						ttl 1h
						timeout 300ms
					}
				}
			}
`)
	c.NoLeak("gitr0utes")
	// Subscribing flushes the cache (changes before it were not seen):
	// wait for it, so that what the test caches stays cached.
	waitLog(t, c, "subscribed to change notifications")
	url := func(repo string) string { return "git://" + proxy + repo }
	if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnA {
		t.Fatalf("alice: %q (%s), want %s", head, errOut, aliceOnA)
	}
	checkLookupAPI(t, c, "alice", a.Addr)
	if _, errOut := lsHead(t, url("/mallory/x.git")); !strings.Contains(errOut, "access to /mallory/x.git refused: suspended") {
		t.Fatalf("mallory: %s", errOut)
	}
	if _, errOut := lsHead(t, url("/carol/x.git")); !strings.Contains(errOut, `no route for key "carol"`) {
		t.Fatalf("carol: %s", errOut)
	}
	set("alice", b.Addr)
	waitHead(t, url("/alice/proj.git"), aliceOnB, time.Second)

	rs.Stop()
	if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnB {
		t.Fatalf("alice with Redis down: %q (%s)", head, errOut)
	}
	start := time.Now()
	if _, errOut := lsHead(t, url("/frank/x.git")); !strings.Contains(errOut, "the route lookup failed") || time.Since(start) > 2*time.Second {
		t.Fatalf("a new key with Redis down, after %v: %s", time.Since(start), errOut)
	}
	rs.Start()
	set("alice", a.Addr) // the restarted server is empty; give alice a route again
	waitHead(t, url("/alice/proj.git"), aliceOnA, 5*time.Second)
}

func waitHead(t *testing.T, url, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		head, errOut := lsHead(t, url)
		if head == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: HEAD %q (%s) after %v, want %s", url, head, errOut, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkLookupAPI: GET /prelude/lookups lists the git lookup without any
// password, and GET /prelude/lookups/git?key= says where a key goes.
func checkLookupAPI(t *testing.T, c *e2e.Caddy, key, want string) {
	t.Helper()
	code, body := c.Get(t, "/prelude/lookups")
	if code != 200 || !strings.Contains(body, `"name":"git"`) || !strings.Contains(body, `"key":"{l4.git.owner}"`) ||
		!strings.Contains(body, `"hit":`) || strings.Contains(body, "gitr0utes") {
		t.Fatalf("GET /prelude/lookups: %d %s", code, body)
	}
	code, body = c.Get(t, "/prelude/lookups/git?key="+key)
	if code != 200 || !strings.Contains(body, `"found":true,"to":["`+want+`"]`) || !strings.Contains(body, `"result":"hit"`) {
		t.Fatalf("GET /prelude/lookups/git?key=%s: %d %s", key, code, body)
	}
	code, body = c.Get(t, "/prelude/lookups/git?key=nobody-here")
	if code != 200 || !strings.Contains(body, `"found":false`) {
		t.Fatalf("GET /prelude/lookups/git?key=nobody-here: %d %s", code, body)
	}
	if code, body = c.Get(t, "/prelude/lookups/nope?key=x"); code != 404 {
		t.Fatalf("an unknown lookup: %d %s", code, body)
	}
}

// TestLookupCacheSurvivesReload: a config reload that keeps a lookup as it
// was keeps its cache (the service is not asked again) and, for Redis, its
// change notifications; a reload that changes the lookup starts afresh.
func TestLookupCacheSurvivesReload(t *testing.T) {
	e2e.RequireGit(t)
	baseA, baseB := t.TempDir(), t.TempDir()
	onA := e2e.MakeBareRepo(t, filepath.Join(baseA, "alice", "proj.git"), 2)
	onB := e2e.MakeBareRepo(t, filepath.Join(baseB, "alice", "proj.git"), 3)
	a, b := e2e.StartGitDaemon(t, baseA), e2e.StartGitDaemon(t, baseB)
	svc := startRouteService(t)
	svc.set("alice", a.Addr)
	rs := e2e.StartRedis(t)
	rs.MustDo("SET", "prelude:route:alice", a.Addr)
	proxyHTTP, proxyRedis := e2e.FreePort(t), e2e.FreePort(t)
	config := func(ttl string) map[string]any {
		server := func(listen string, lookup map[string]any) map[string]any {
			return map[string]any{"listen": []string{listen}, "routes": []any{map[string]any{
				"handle": []any{map[string]any{"handler": "git", "lookup": lookup}}}}}
		}
		return map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
			"http": server(proxyHTTP, map[string]any{"source": "http", "url": "http://" + svc.Addr + "/route/{key}",
				"key": "{l4.git.owner}", "ttl": ttl}),
			"redis": server(proxyRedis, map[string]any{"source": "redis", "url": "redis://" + rs.Addr,
				"key": "{l4.git.owner}", "ttl": "1h"}),
		}}}}
	}
	c := e2e.StartCaddy(t, config("1h"))
	for _, p := range []string{proxyHTTP, proxyRedis} {
		if got, errOut := lsHead(t, "git://"+p+"/alice/proj.git"); got != onA {
			t.Fatalf("%s: %q (%s), want %s", p, got, errOut, onA)
		}
	}
	c.Reload(t, config("1h"))
	if got, errOut := lsHead(t, "git://"+proxyHTTP+"/alice/proj.git"); got != onA {
		t.Fatalf("after the reload: %q (%s)", got, errOut)
	}
	if n := svc.requests("alice"); n != 1 {
		t.Fatalf("the service was asked %d times for alice across a reload that kept the lookup, want once", n)
	}
	// The Redis subscription outlived the config that made it: a change
	// still reaches the cache (whose TTL is an hour) within a second.
	rs.MustDo("SET", "prelude:route:alice", b.Addr)
	waitHead(t, "git://"+proxyRedis+"/alice/proj.git", onB, time.Second)

	c.Reload(t, config("2h"))
	if got, errOut := lsHead(t, "git://"+proxyHTTP+"/alice/proj.git"); got != onA {
		t.Fatalf("after a reload that changed the lookup: %q (%s)", got, errOut)
	}
	if n := svc.requests("alice"); n != 2 {
		t.Fatalf("the service was asked %d times for alice after the lookup changed, want twice", n)
	}
}

// waitLog waits up to 5 s for Caddy's log to hold text.
func waitLog(t *testing.T, c *e2e.Caddy, text string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(c.Logs(), text); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say %q", text)
		}
	}
}
