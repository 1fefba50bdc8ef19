package l4git_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// writeRoutes publishes a routing table the safe way: write, then rename.
func writeRoutes(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// lsHead is the HEAD a clone through the proxy would get, or the error.
func lsHead(t *testing.T, url string) (string, string) {
	out, errOut, err := e2e.Git(t, t.TempDir(), "ls-remote", url, "HEAD")
	if err != nil {
		return "", errOut
	}
	head, _, _ := strings.Cut(out, "\t")
	return head, ""
}

// TestLookupFileRoutesPerOwner is the interface as written: git
// clients routed per owner by a TSV file, a key with no route refused with
// git's ERR naming it, a moved route taking effect within a second of the
// file being replaced, and a bad file keeping the last good table.
func TestLookupFileRoutesPerOwner(t *testing.T) {
	e2e.RequireGit(t)
	baseA, baseB := t.TempDir(), t.TempDir()
	aliceOnA := e2e.MakeBareRepo(t, filepath.Join(baseA, "alice", "proj.git"), 3)
	bobOnB := e2e.MakeBareRepo(t, filepath.Join(baseB, "bob", "app.git"), 4)
	aliceOnB := e2e.MakeBareRepo(t, filepath.Join(baseB, "alice", "proj.git"), 5)
	a, b := e2e.StartGitDaemon(t, baseA), e2e.StartGitDaemon(t, baseB)
	routes := filepath.Join(t.TempDir(), "git-routes.tsv")
	writeRoutes(t, routes, "# owner\tservers\nalice\t"+a.Addr+"\nbob\t"+b.Addr+"\n")
	proxy := e2e.FreePort(t)
	startRoutes(t, proxy, `
			route {
				git {
					lookup file `+routes+` {
						key {l4.git.owner}
					}
				}
			}
`)
	url := func(repo string) string { return "git://" + proxy + repo }

	if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnA {
		t.Fatalf("alice: HEAD %q (%s), want %s from server A", head, errOut, aliceOnA)
	}
	if head, errOut := lsHead(t, url("/bob/app.git")); head != bobOnB {
		t.Fatalf("bob: HEAD %q (%s), want %s from server B", head, errOut, bobOnB)
	}
	_, errOut := lsHead(t, url("/carol/x.git"))
	if !strings.Contains(errOut, `remote error: no route for repository /carol/x.git (no route for key "carol")`) {
		t.Fatalf("carol, not in the table: %s", errOut)
	}
	dir := t.TempDir()
	e2e.MustGit(t, dir, "clone", "-q", url("/alice/proj.git"), "c")
	if got := strings.TrimSpace(e2e.MustGit(t, filepath.Join(dir, "c"), "rev-parse", "HEAD")); got != aliceOnA {
		t.Fatalf("clone of alice: HEAD %s, want %s", got, aliceOnA)
	}

	// Move alice to B: new connections follow within a second.
	writeRoutes(t, routes, "alice\t"+b.Addr+"\nbob\t"+b.Addr+"\n")
	deadline := time.Now().Add(time.Second)
	for {
		head, _ := lsHead(t, url("/alice/proj.git"))
		if head == aliceOnB {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice still at %q a second after the move, want %s", head, aliceOnB)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A bad table (and one cut mid-line) keeps the last good one.
	writeRoutes(t, routes, "alice "+a.Addr+"\n")
	time.Sleep(600 * time.Millisecond)
	writeRoutes(t, routes, "alice\t"+a.Addr+"\nbob\t"+a.Addr[:4])
	time.Sleep(600 * time.Millisecond)
	if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnB {
		t.Fatalf("after bad tables alice went to %q (%s), want the last good route (B, %s)", head, errOut, aliceOnB)
	}
}

// TestLookupMissFallsThroughToTo: with to beside the lookup, a key the
// table does not hold goes to the default instead of being refused.
func TestLookupMissFallsThroughToTo(t *testing.T) {
	e2e.RequireGit(t)
	base := t.TempDir()
	head := e2e.MakeBareRepo(t, filepath.Join(base, "carol", "x.git"), 2)
	d := e2e.StartGitDaemon(t, base)
	routes := filepath.Join(t.TempDir(), "routes.tsv")
	writeRoutes(t, routes, "alice\t"+e2e.FreePort(t)+"\n")
	proxy := e2e.FreePort(t)
	startRoutes(t, proxy, `
			route {
				git {
					lookup file `+routes+` {
						key {l4.git.owner}
					}
					to `+d.Addr+`
				}
			}
`)
	if got, errOut := lsHead(t, "git://"+proxy+"/carol/x.git"); got != head {
		t.Fatalf("carol through the default: %q (%s), want %s", got, errOut, head)
	}
}

// TestPlaceholdersInTo: a to address built from the request per connection
// (here the owner is the server's host); a placeholder that is empty or
// would change the address's shape is refused with ERR, never dialed.
func TestPlaceholdersInTo(t *testing.T) {
	e2e.RequireGit(t)
	base := t.TempDir()
	d := e2e.StartGitDaemon(t, base)
	host, port, _ := strings.Cut(d.Addr, ":")
	head := e2e.MakeBareRepo(t, filepath.Join(base, host, "x.git"), 2)
	proxy := e2e.FreePort(t)
	startRoutes(t, proxy, `
			route {
				git {
					to {l4.git.owner}:`+port+`
				}
			}
`)
	if got, errOut := lsHead(t, "git://"+proxy+"/"+host+"/x.git"); got != head {
		t.Fatalf("owner %s: %q (%s), want %s", host, got, errOut, head)
	}
	for repo, want := range map[string]string{
		"/x.git":             `placeholder {l4.git.owner} is empty`,
		"/bad@x/x.git":       `placeholder {l4.git.owner} is "bad@x", with '@'`,
		"/10.0.0.1:22/x.git": `is "10.0.0.1:22", with ':'`,
	} {
		_, errOut := lsHead(t, "git://"+proxy+repo)
		if !strings.Contains(errOut, "remote error: no route for repository "+repo) || !strings.Contains(errOut, want) {
			t.Errorf("%s: %s, want ERR naming the repository and %s", repo, errOut, want)
		}
	}
}
