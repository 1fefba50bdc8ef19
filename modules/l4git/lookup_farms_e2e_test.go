package l4git_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/farm"
)

// TestLookupNamesFarms: a table's answer names a farm of the config
// ("farm:east"); the farm's own options (policy, health) apply; moving a
// key between farms is one word in the table; a farm the config does not
// define is refused with ERR naming the key, not the farm.
func TestLookupNamesFarms(t *testing.T) {
	e2e.RequireGit(t)
	baseE, baseW := t.TempDir(), t.TempDir()
	aliceOnE := e2e.MakeBareRepo(t, filepath.Join(baseE, "alice", "proj.git"), 3)
	aliceOnW := e2e.MakeBareRepo(t, filepath.Join(baseW, "alice", "proj.git"), 4)
	bobOnW := e2e.MakeBareRepo(t, filepath.Join(baseW, "bob", "app.git"), 5)
	east, west := e2e.StartGitDaemon(t, baseE), e2e.StartGitDaemon(t, baseW)
	dead := e2e.FreePort(t)
	routes := filepath.Join(t.TempDir(), "routes.tsv")
	writeRoutes(t, routes, "alice\tfarm:east\nbob\tfarm:west\ncarol\tfarm:gone\n")
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			route {
				git {
					lookup file `+routes+` {
						key {l4.git.owner}
					}
					farm east {
						to `+dead+` `+east.Addr+`
						lb_policy first
						health_interval 100ms
					}
					farm west {
						to `+west.Addr+`
					}
				}
			}
`)
	url := func(repo string) string { return "git://" + proxy + repo }
	if head, errOut := lsHead(t, url("/alice/proj.git")); head != aliceOnE {
		t.Fatalf("alice: HEAD %q (%s), want %s from farm east", head, errOut, aliceOnE)
	}
	if head, errOut := lsHead(t, url("/bob/app.git")); head != bobOnW {
		t.Fatalf("bob: HEAD %q (%s), want %s from farm west", head, errOut, bobOnW)
	}
	_, errOut := lsHead(t, url("/carol/x.git"))
	if !strings.Contains(errOut, `no route for key "carol"`) || strings.Contains(errOut, "gone") {
		t.Fatalf("carol, routed to a farm the config lacks: %s", errOut)
	}

	// Farm east's health checks find its dead member.
	waitFarm(t, c, "git farm east", func(ms []farm.MemberStatus) bool {
		for _, m := range ms {
			if m.Address == dead {
				return !m.Healthy
			}
		}
		return false
	})
	code, body := c.Get(t, "/prelude/lookups/git?key=alice")
	if code != 200 || !strings.Contains(body, `"farm":"east"`) || !strings.Contains(body, east.Addr) {
		t.Fatalf("GET /prelude/lookups/git?key=alice: %d %s", code, body)
	}

	// Move alice to west: one word in the table.
	writeRoutes(t, routes, "alice\tfarm:west\nbob\tfarm:west\n")
	waitHead(t, url("/alice/proj.git"), aliceOnW, time.Second)
}

// TestLookupMembersAreHealthChecked: members a lookup's answers list are
// kept as dynamic members, probed by the farm's health checks, shown in
// GET /prelude/farms, and skipped while unhealthy.
func TestLookupMembersAreHealthChecked(t *testing.T) {
	e2e.RequireGit(t)
	base := t.TempDir()
	head := e2e.MakeBareRepo(t, filepath.Join(base, "alice", "proj.git"), 3)
	d := e2e.StartGitDaemon(t, base)
	dead := e2e.FreePort(t)
	routes := filepath.Join(t.TempDir(), "routes.tsv")
	writeRoutes(t, routes, "alice\t"+dead+","+d.Addr+"\n")
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			route {
				git {
					lookup file `+routes+` {
						key {l4.git.owner}
					}
					lb_policy first
					health_interval 100ms
				}
			}
`)
	if got, errOut := lsHead(t, "git://"+proxy+"/alice/proj.git"); got != head {
		t.Fatalf("alice: %q (%s), want %s", got, errOut, head)
	}
	waitFarm(t, c, "git", func(ms []farm.MemberStatus) bool {
		var deadDown, liveUp bool
		for _, m := range ms {
			deadDown = deadDown || m.Address == dead && m.Dynamic && !m.Healthy
			liveUp = liveUp || m.Address == d.Addr && m.Dynamic && m.Healthy
		}
		return deadDown && liveUp
	})
	c.WaitMetric(t, `caddy_layer4_farm_member_healthy{member="`+dead+`"} 0`)
}

// waitFarm polls GET /prelude/farms until the farm named name has members
// for which ok holds, for up to 5 s.
func waitFarm(t *testing.T, c *e2e.Caddy, name string, ok func([]farm.MemberStatus) bool) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		code, body := c.Get(t, "/prelude/farms")
		last = body
		var farms []farm.Status
		if code != 200 || json.Unmarshal([]byte(body), &farms) != nil {
			continue
		}
		for _, f := range farms {
			if f.Name == name && ok(f.Members) {
				return
			}
		}
	}
	t.Fatalf("farm %q never reached the state wanted: %s", name, last)
}

// TestLookupBigTableByTheBuilder: a table big enough for the builder
// process (64 KiB and more) routes clones, and a replaced one takes over,
// built by the builder, as the reload's log line says. On a machine other
// work keeps busy the builder (at the lowest priority) may run out of
// time, and Caddy builds the table itself: that is accepted here, and the
// log says so; the builder's own tables are checked in package lookup.
func TestLookupBigTableByTheBuilder(t *testing.T) {
	e2e.RequireGit(t)
	baseA, baseB := t.TempDir(), t.TempDir()
	onA := e2e.MakeBareRepo(t, filepath.Join(baseA, "alice", "proj.git"), 3)
	onB := e2e.MakeBareRepo(t, filepath.Join(baseB, "alice", "proj.git"), 4)
	a, b := e2e.StartGitDaemon(t, baseA), e2e.StartGitDaemon(t, baseB)
	table := func(alice string) string {
		var sb strings.Builder
		for i := 0; sb.Len() < 256<<10; i++ {
			fmt.Fprintf(&sb, "owner-%d\t10.0.%d.%d:9418\n", i, i/256%256, i%256)
		}
		return sb.String() + "alice\t" + alice + "\n"
	}
	routes := filepath.Join(t.TempDir(), "routes.tsv")
	writeRoutes(t, routes, table(a.Addr))
	proxy := e2e.FreePort(t)
	c := startRoutes(t, proxy, `
			route {
				git {
					lookup file `+routes+` {
						key {l4.git.owner}
					}
				}
			}
`)
	url := "git://" + proxy + "/alice/proj.git"
	if head, errOut := lsHead(t, url); head != onA {
		t.Fatalf("alice: HEAD %q (%s), want %s from A", head, errOut, onA)
	}
	writeRoutes(t, routes, table(b.Addr))
	waitHead(t, url, onB, 10*time.Second)
	if logs := c.Logs(); !strings.Contains(logs, `"built":"child"`) && !strings.Contains(logs, `"built":"here, the child ran out of time"`) {
		t.Fatalf("the reload was not built by the builder: %s", logs[max(0, len(logs)-2000):])
	}
}
