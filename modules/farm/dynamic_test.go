package farm

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// fileLookup is a farm's lookup JSON for a TSV file holding table, keyed
// by {l4.test.key}.
func fileLookup(t *testing.T, table string) json.RawMessage {
	t.Helper()
	path := filepath.Join(t.TempDir(), "routes.tsv")
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{"source": "file", "path": path, "key": "{l4.test.key}"})
	return b
}

// dialKey dials f as a connection whose lookup key is key.
func dialKey(f *Farm, key string) (*Lease, error) {
	repl := caddy.NewReplacer()
	repl.Set("l4.test.key", key)
	return f.Dial(WithReplacer(context.Background(), repl), nil, accept)
}

func release(l *Lease) {
	l.Release()
	_ = l.Conn.Close()
}

// TestDynamicMembersKeepStateBoundedAndDropIdle: a member a lookup found
// keeps its failure mark after its connection, the set holds at most
// max_dynamic_members, and idle members without live connections go.
func TestDynamicMembersKeepStateBoundedAndDropIdle(t *testing.T) {
	live := listeners(t, 2)
	dead := e2e.FreePort(t)
	f := provisioned(t, &Farm{Name: t.Name(), MaxDynamicMembers: 2, FailDuration: caddy.Duration(time.Minute),
		LookupRaw: fileLookup(t, "a\t"+live[0]+"\nb\t"+live[1]+"\ndead\t"+dead+"\n")})

	if _, err := dialKey(f, "dead"); err == nil {
		t.Fatal("dialed a dead member")
	}
	if !f.dynamic.has(dead) || !f.dynamicMember(dead, memberOpts{}).Failed(time.Now()) {
		t.Fatal("the dead member's failure mark did not outlive its connection")
	}
	la, err := dialKey(f, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer release(la)
	lb, err := dialKey(f, "b")
	if err != nil {
		t.Fatal(err)
	}
	release(lb)
	if got := len(f.dynamic.list()); got != 2 || f.dynamic.has(dead) {
		t.Fatalf("%d members (dead kept: %v), want 2, the least recently used dropped", got, f.dynamic.has(dead))
	}
	if _, ok := members.References(poolKey(dead)); ok {
		t.Error("the dropped member's shared state is still referenced")
	}
	f.dynamic.dropIdle(time.Now().Add(time.Hour), time.Minute)
	if !f.dynamic.has(live[0]) || f.dynamic.has(live[1]) {
		t.Fatalf("after dropIdle: a (live connection) kept %v, b (idle) kept %v", f.dynamic.has(live[0]), f.dynamic.has(live[1]))
	}
	st := farmStatus(t, f.Name)
	if len(st.Members) != 1 || st.Members[0].Address != live[0] || !st.Members[0].Dynamic || st.Members[0].Active != 1 {
		t.Fatalf("status members %+v", st.Members)
	}
}

func farmStatus(t *testing.T, name string) Status {
	t.Helper()
	for _, st := range Farms() {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("no farm %q in %+v", name, Farms())
	return Status{}
}

// TestHealthChecksProbeDynamicMembers: active checks reach members a
// lookup found, and a member that fails them is skipped.
func TestHealthChecksProbeDynamicMembers(t *testing.T) {
	live := listeners(t, 2)
	bad := live[1]
	f := &Farm{Name: t.Name(), HealthInterval: caddy.Duration(20 * time.Millisecond),
		LookupRaw: fileLookup(t, "a\t"+bad+","+live[0]+"\n")}
	f.SetProbe(func(_ context.Context, c net.Conn) error {
		if c.RemoteAddr().String() == bad {
			return errors.New("not a broker")
		}
		return nil
	})
	provisioned(t, f)
	l, err := dialKey(f, "a") // finds both members
	if err != nil {
		t.Fatal(err)
	}
	release(l)
	deadline := time.Now().Add(5 * time.Second)
	for !f.dynamicMember(bad, memberOpts{}).Unhealthy() {
		if time.Now().After(deadline) {
			t.Fatal("the dynamic member was never probed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 4 {
		l, err := dialKey(f, "a")
		if err != nil {
			t.Fatal(err)
		}
		if l.Member.Addr == bad {
			t.Fatal("dialed the unhealthy member")
		}
		release(l)
	}
}

// TestNamedFarms: an answer naming a farm dials through that farm; one
// naming a farm the config lacks is refused naming the key, not the farm.
func TestNamedFarms(t *testing.T) {
	blue := listeners(t, 2)
	f := provisioned(t, &Farm{Name: t.Name(), LookupRaw: fileLookup(t, "alice\tfarm:blue\nbob\tfarm:nope\n"),
		Farms: map[string]*Farm{"blue": {To: blue, LBPolicy: "first"}}})
	l, err := dialKey(f, "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer release(l)
	if l.Member.Addr != blue[0] || l.route.farm != "blue" {
		t.Fatalf("alice went to %s by farm %q, want %s by blue", l.Member.Addr, l.route.farm, blue[0])
	}
	st := farmStatus(t, t.Name()+" farm blue")
	active := map[string]int64{}
	for _, m := range st.Members {
		active[m.Address] = m.Active
	}
	if len(active) != 2 || active[blue[0]] != 1 || active[blue[1]] != 0 {
		t.Fatalf("farm blue: %+v", st.Members)
	}
	_, err = dialKey(f, "bob")
	var nr *NoRouteError
	if !errors.As(err, &nr) || nr.Key != "bob" || strings.Contains(err.Error(), "nope") {
		t.Fatalf("bob: %v, want a NoRouteError for bob that does not name the farm", err)
	}
	ans, _ := ResolveLookup(context.Background(), t.Name(), "bob")
	if ans.Farm != "nope" || ans.Error == "" {
		t.Fatalf("admin answer for bob: %+v", ans)
	}
	ans, _ = ResolveLookup(context.Background(), t.Name(), "alice")
	if ans.Farm != "blue" || len(ans.FarmTo) != 2 || ans.Error != "" {
		t.Fatalf("admin answer for alice: %+v", ans)
	}
}

func TestNamedFarmsValidate(t *testing.T) {
	for _, c := range []struct {
		f    *Farm
		want string
	}{
		{&Farm{To: []string{"a:1"}, Farms: map[string]*Farm{"b": {To: []string{"b:1"}}}}, "only a farm with a lookup"},
		{&Farm{LookupRaw: json.RawMessage(`{}`), Farms: map[string]*Farm{"b c": {To: []string{"b:1"}}}}, "holds"},
		{&Farm{LookupRaw: json.RawMessage(`{}`), Farms: map[string]*Farm{"b": {LookupRaw: json.RawMessage(`{}`)}}}, "neither"},
		{&Farm{LookupRaw: json.RawMessage(`{}`), Farms: map[string]*Farm{"b": nil}}, "no options"},
		{&Farm{To: []string{"{l4.x}:1"}, MaxDynamicMembers: -1}, "max_dynamic_members"},
	} {
		if err := c.f.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.f, err, c.want)
		}
	}
}

// TestDynamicMembersSurviveReload: at cleanup a farm hands its dynamic
// members to the newer farm of its name, failure marks and all.
func TestDynamicMembersSurviveReload(t *testing.T) {
	dead := e2e.FreePort(t)
	table := fileLookup(t, "dead\t"+dead+"\n")
	old := &Farm{Name: t.Name(), FailDuration: caddy.Duration(time.Minute), LookupRaw: table}
	provisioned(t, old)
	if _, err := dialKey(old, "dead"); err == nil {
		t.Fatal("dialed a dead member")
	}
	next := provisioned(t, &Farm{Name: t.Name(), FailDuration: caddy.Duration(time.Minute), LookupRaw: table})
	if err := old.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if !next.dynamic.has(dead) || !next.dynamicMember(dead, memberOpts{}).Failed(time.Now()) {
		t.Fatal("the new farm did not take over the failed dynamic member")
	}
}
