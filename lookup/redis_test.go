package lookup

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

func TestRedisSource(t *testing.T) {
	rs := e2e.StartRedis(t, "--requirepass", "r3dispass")
	r, err := NewRedis("redis://:r3dispass@"+rs.Addr+"/0", "route:", "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if strings.Contains(r.String(), "r3dispass") {
		t.Fatalf("String shows the password: %s", r)
	}
	set := func(k, v string) {
		t.Helper()
		if _, err := r.client.Set(context.Background(), k, v, 0).Result(); err != nil {
			t.Fatal(err)
		}
	}
	set("route:alice", "127.0.0.1:9418,127.0.0.2:9418")
	set("route:mallory", `{"refuse": "suspended"}`)
	set("route:garbage", "not an address")
	set("route:empty", "")
	ctx := context.Background()
	if a, ok, err := r.Fetch(ctx, "alice"); err != nil || !ok || len(a.Addrs) != 2 {
		t.Errorf("alice: %v %v %v", a, ok, err)
	}
	if a, ok, err := r.Fetch(ctx, "mallory"); err != nil || !ok || a.Refuse != "suspended" {
		t.Errorf("mallory: %v %v %v", a, ok, err)
	}
	if _, ok, err := r.Fetch(ctx, "nobody"); err != nil || ok {
		t.Errorf("nobody: %v %v", ok, err)
	}
	for _, k := range []string{"garbage", "empty"} {
		if _, _, err := r.Fetch(ctx, k); err == nil {
			t.Errorf("%s: no error", k)
		}
	}
	on, err := r.NotificationsOn(ctx)
	if err != nil || !on {
		t.Errorf("NotificationsOn: %v %v", on, err)
	}
	hr, _ := NewRedis("redis://:r3dispass@"+rs.Addr, "", "routes")
	defer hr.Close()
	hr.client.HSet(ctx, "routes", "bob", "127.0.0.3:9418")
	if a, ok, err := hr.Fetch(ctx, "bob"); err != nil || !ok || a.Addrs[0] != "127.0.0.3:9418" {
		t.Errorf("hash: %v %v %v", a, ok, err)
	}
	bad, _ := NewRedis("redis://:wrong@"+rs.Addr, "route:", "")
	defer bad.Close()
	if _, _, err := bad.Fetch(ctx, "alice"); err == nil || strings.Contains(err.Error(), "wrong") {
		t.Errorf("wrong password: %v", err)
	}
}

// TestRedisWatchInvalidates: a route changed in Redis reaches the cache
// within a second, by keyspace notification (the TTL is an hour); a
// restart of Redis flushes the cache once resubscribed.
func TestRedisWatchInvalidates(t *testing.T) {
	for _, hash := range []string{"", "routes"} {
		rs := e2e.StartRedis(t)
		r, _ := NewRedis("redis://"+rs.Addr, "route:", hash)
		defer r.Close()
		setRoute := func(v string) {
			if hash != "" {
				rs.MustDo("HSET", hash, "alice", v)
			} else {
				rs.MustDo("SET", "route:alice", v)
			}
		}
		setRoute("127.0.0.1:1")
		c, _ := NewCache(CacheConfig{TTL: time.Hour, NegativeTTL: time.Hour, Stale: time.Hour, Timeout: 500 * time.Millisecond, MaxEntries: 100}, r.Fetch)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		subscribed := make(chan struct{}, 10)
		go r.Watch(ctx, c, func(ok bool, err error) {
			if ok {
				subscribed <- struct{}{}
			}
		})
		<-subscribed
		route := func() string {
			a, _, _, err := c.Get(context.Background(), "alice")
			if err != nil {
				return err.Error()
			}
			return strings.Join(a.Addrs, ",")
		}
		if got := route(); got != "127.0.0.1:1" {
			t.Fatalf("hash %q: first route %q", hash, got)
		}
		setRoute("127.0.0.1:2")
		waitFor(t, "the change reaches the cache", func() bool { return route() == "127.0.0.1:2" })

		rs.Stop()
		// While Redis is down, the cached answer is still served.
		if got := route(); got != "127.0.0.1:2" {
			t.Fatalf("hash %q: with Redis down: %q", hash, got)
		}
		rs.Start() // empty: it keeps nothing on disk
		select {
		case <-subscribed:
		case <-time.After(5 * time.Second):
			t.Fatalf("hash %q: not resubscribed after the restart", hash)
		}
		waitFor(t, "the restarted Redis's (empty) table is used", func() bool {
			_, ok, _, err := c.Get(context.Background(), "alice")
			return err == nil && !ok
		})
		setRoute("127.0.0.1:3")
		waitFor(t, "changes after the restart reach the cache", func() bool { return route() == "127.0.0.1:3" })
		rs.Stop()
	}
}
