package lookup

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeService is a Fetch whose answers, failures and delay a test sets.
type fakeService struct {
	mu    sync.Mutex
	table map[string]Answer
	err   error
	delay time.Duration
	calls atomic.Int64
}

func (s *fakeService) fetch(ctx context.Context, key string) (Answer, bool, error) {
	s.calls.Add(1)
	s.mu.Lock()
	delay, err := s.delay, s.err
	a, ok := s.table[key]
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return Answer{}, false, ctx.Err()
		}
	}
	if err != nil {
		return Answer{}, false, err
	}
	return a, ok, nil
}

func (s *fakeService) set(f func(*fakeService)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// clock is a settable now for a Cache.
type clock struct{ t atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.t.Load()) }
func (c *clock) advance(d time.Duration) { c.t.Add(int64(d)) }

func newTestCache(t *testing.T, cfg CacheConfig) (*Cache, *fakeService, *clock) {
	t.Helper()
	svc := &fakeService{table: map[string]Answer{"alice": {Addrs: []string{"a:1"}}}}
	c, err := NewCache(cfg, svc.fetch)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{}
	clk.t.Store(time.Unix(1000, 0).UnixNano())
	c.now = clk.now
	return c, svc, clk
}

var testCfg = CacheConfig{TTL: 30 * time.Second, NegativeTTL: 5 * time.Second, Stale: time.Minute, Timeout: 200 * time.Millisecond, MaxEntries: 3}

func get(t *testing.T, c *Cache, key string) (Answer, bool, Result, error) {
	t.Helper()
	return c.Get(context.Background(), key)
}

func TestCacheTTLAndNegativeTTL(t *testing.T) {
	c, svc, clk := newTestCache(t, testCfg)
	if a, ok, r, err := get(t, c, "alice"); err != nil || !ok || a.Addrs[0] != "a:1" || r != Fetched {
		t.Fatalf("first get: %v %v %v %v", a, ok, r, err)
	}
	if _, _, r, _ := get(t, c, "alice"); r != Hit {
		t.Fatalf("second get: %v, want a hit", r)
	}
	if _, ok, r, err := get(t, c, "bob"); ok || err != nil || r != Fetched {
		t.Fatalf("bob: %v %v %v", ok, r, err)
	}
	if _, ok, r, _ := get(t, c, "bob"); ok || r != Hit {
		t.Fatalf("bob again: %v %v, want a cached miss", ok, r)
	}
	clk.advance(6 * time.Second) // past the negative TTL, within the TTL
	if _, _, r, _ := get(t, c, "bob"); r != Fetched {
		t.Fatalf("bob after the negative TTL: %v", r)
	}
	if _, _, r, _ := get(t, c, "alice"); r != Hit {
		t.Fatalf("alice within TTL: %v", r)
	}
	clk.advance(25 * time.Second)
	if _, _, r, _ := get(t, c, "alice"); r != Fetched {
		t.Fatalf("alice after TTL: %v", r)
	}
	if n := svc.calls.Load(); n != 4 {
		t.Fatalf("service asked %d times, want 4", n)
	}
	st := c.Stats()
	if st.Hits != 3 || st.Fetches != 4 || st.Misses != 2 || st.Errors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheStaleWhileError(t *testing.T) {
	c, svc, clk := newTestCache(t, testCfg)
	get(t, c, "alice")
	svc.set(func(s *fakeService) { s.err = errors.New("connection refused") })
	clk.advance(31 * time.Second)
	if a, ok, r, err := get(t, c, "alice"); err != nil || !ok || r != Stale || a.Addrs[0] != "a:1" {
		t.Fatalf("within the stale window: %v %v %v %v", a, ok, r, err)
	}
	clk.advance(time.Minute)
	if _, _, r, err := get(t, c, "alice"); err == nil || r != Failed {
		t.Fatalf("past the stale window: %v %v", r, err)
	}
	if _, _, r, err := get(t, c, "carol"); err == nil || r != Failed {
		t.Fatalf("never cached: %v %v", r, err)
	}
	svc.set(func(s *fakeService) { s.err = nil })
	if _, ok, r, err := get(t, c, "alice"); err != nil || !ok || r != Fetched {
		t.Fatalf("service back: %v %v %v", ok, r, err)
	}
}

func TestCacheTimeout(t *testing.T) {
	c, svc, _ := newTestCache(t, testCfg)
	svc.set(func(s *fakeService) { s.delay = 2 * time.Second })
	start := time.Now()
	_, _, r, err := get(t, c, "alice")
	if err == nil || r != Failed || time.Since(start) > time.Second {
		t.Fatalf("slow service: %v %v after %v", r, err, time.Since(start))
	}
	if want := "did not answer within 200ms"; err.Error() != "the lookup service "+want {
		t.Fatalf("error %q", err)
	}
}

// TestCacheOneFetchPerKey: many callers of a key being fetched share the
// one fetch, and a caller that gives up does not fail the others.
func TestCacheOneFetchPerKey(t *testing.T) {
	c, svc, _ := newTestCache(t, testCfg)
	svc.set(func(s *fakeService) { s.delay = 50 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, _, err := c.Get(ctx, "alice"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok, _, err := c.Get(context.Background(), "alice"); err != nil || !ok {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 || svc.calls.Load() != 1 {
		t.Fatalf("%d callers failed; the service was asked %d times, want once", failed.Load(), svc.calls.Load())
	}
}

func TestCacheBounded(t *testing.T) {
	c, svc, _ := newTestCache(t, testCfg)
	for i := range 10 {
		get(t, c, fmt.Sprint("k", i))
	}
	if st := c.Stats(); st.Entries != testCfg.MaxEntries {
		t.Fatalf("%d entries, want %d", st.Entries, testCfg.MaxEntries)
	}
	if _, _, r, _ := get(t, c, "k9"); r != Hit {
		t.Fatalf("most recent key: %v", r)
	}
	if _, _, r, _ := get(t, c, "k0"); r != Fetched {
		t.Fatalf("oldest key: %v", r)
	}
	_ = svc
	long := make([]byte, MaxKeyLen+1)
	if _, _, _, err := get(t, c, string(long)); err == nil {
		t.Fatal("a key over MaxKeyLen was looked up")
	}
}

func TestCacheInvalidate(t *testing.T) {
	c, svc, _ := newTestCache(t, testCfg)
	get(t, c, "alice")
	svc.set(func(s *fakeService) { s.table["alice"] = Answer{Addrs: []string{"b:2"}} })
	c.Invalidate("alice")
	if a, _, r, _ := get(t, c, "alice"); r != Fetched || a.Addrs[0] != "b:2" {
		t.Fatalf("after Invalidate: %v %v", a, r)
	}
	c.Flush()
	if _, _, r, _ := get(t, c, "alice"); r != Fetched {
		t.Fatalf("after Flush: %v", r)
	}
}

// TestCacheInvalidateDuringFetch: a fetch that began before an
// invalidation may have read the old value; its answer is not kept.
func TestCacheInvalidateDuringFetch(t *testing.T) {
	c, svc, _ := newTestCache(t, testCfg)
	svc.set(func(s *fakeService) { s.delay = 100 * time.Millisecond })
	done := make(chan struct{})
	go func() { get(t, c, "alice"); close(done) }()
	time.Sleep(30 * time.Millisecond)
	svc.set(func(s *fakeService) { s.table["alice"] = Answer{Addrs: []string{"b:2"}}; s.delay = 0 })
	c.Invalidate("alice")
	a, _, r, _ := get(t, c, "alice") // not joined to the old fetch
	<-done
	if r != Fetched || a.Addrs[0] != "b:2" {
		t.Fatalf("during the old fetch: %v %v", a, r)
	}
	if a, _, r, _ := get(t, c, "alice"); a.Addrs[0] != "b:2" {
		t.Fatalf("after the old fetch ended: %v %v (the old answer was stored)", a, r)
	}
}
