package lookup

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// A Fetch asks a lookup service for one key: the answer and true, false
// for a key the service does not hold, or an error (the service is down,
// slow, or answered something unusable).
type Fetch func(ctx context.Context, key string) (Answer, bool, error)

// CacheConfig is how a Cache keeps a service's answers.
type CacheConfig struct {
	// How long an answer is used without asking again.
	TTL time.Duration
	// How long "no such key" is used without asking again.
	NegativeTTL time.Duration
	// How long past its TTL an answer is still served while the service
	// fails (stale-while-error). Zero: never.
	Stale time.Duration
	// How long one fetch may take; the callers waiting for it then get
	// a stale answer or an error.
	Timeout time.Duration
	// Most keys kept; the least recently used goes first.
	MaxEntries int
}

// Result says how a Get was answered, for metrics and the admin API.
type Result int

const (
	Hit     Result = iota // a fresh cached answer
	Fetched               // the service was asked
	Stale                 // the service failed; an expired answer was served
	Failed                // the service failed and nothing could be served
)

func (r Result) String() string {
	return [...]string{"hit", "fetched", "stale", "failed"}[r]
}

// CacheStats are a Cache's counters since it was made.
type CacheStats struct {
	Entries int    `json:"entries"`
	Hits    uint64 `json:"hits"`
	Fetches uint64 `json:"fetches"`
	Misses  uint64 `json:"misses"` // fetches the service answered "no such key"
	Errors  uint64 `json:"errors"` // fetches that failed
	Stale   uint64 `json:"stale"`  // answers served past their TTL because a fetch failed
}

// A Cache is a bounded LRU of a service's answers with a TTL, a negative
// TTL, one fetch at a time per key (callers asking for a key being
// fetched wait for that fetch: the service sees one request per key per
// TTL however many clients connect), a timeout per fetch, and
// stale-while-error. Errors are not cached: the next caller asks again.
// It is safe for concurrent use.
type Cache struct {
	cfg    CacheConfig
	fetch  Fetch
	lru    *lru.Cache[string, *entry]
	flight singleflight.Group
	// epoch changes with every invalidation; a fetch that began before
	// one does not store its answer, because it may have read the value
	// the invalidation replaced.
	epoch atomic.Uint64
	now   func() time.Time

	hits, fetches, misses, errs, stale atomic.Uint64
}

type entry struct {
	ans     Answer
	found   bool
	expires time.Time
}

// NewCache makes a cache in front of fetch.
func NewCache(cfg CacheConfig, fetch Fetch) (*Cache, error) {
	switch {
	case cfg.MaxEntries < 1:
		return nil, errors.New("max_entries must be at least 1")
	case cfg.TTL <= 0 || cfg.NegativeTTL < 0 || cfg.Stale < 0:
		return nil, errors.New("ttl must be positive; negative_ttl and stale must not be negative")
	case cfg.Timeout <= 0:
		return nil, errors.New("timeout must be positive")
	}
	l, err := lru.New[string, *entry](cfg.MaxEntries)
	if err != nil {
		return nil, err
	}
	return &Cache{cfg: cfg, fetch: fetch, lru: l, now: time.Now}, nil
}

// Get answers key from the cache while its answer is fresh, and otherwise
// from the service, waiting at most the fetch timeout (or until ctx ends).
// A failed fetch serves the expired answer while it is within Stale of
// its TTL; otherwise the error is returned.
func (c *Cache) Get(ctx context.Context, key string) (Answer, bool, Result, error) {
	if len(key) > MaxKeyLen {
		return Answer{}, false, Failed, fmt.Errorf("the key is longer than %d bytes", MaxKeyLen)
	}
	now := c.now()
	e, cached := c.lru.Get(key)
	if cached && now.Before(e.expires) {
		c.hits.Add(1)
		return e.ans, e.found, Hit, nil
	}
	ch := c.flight.DoChan(key, func() (any, error) { return c.fetchAndStore(key) })
	var err error
	select {
	case r := <-ch:
		if r.Err == nil {
			e := r.Val.(*entry)
			return e.ans, e.found, Fetched, nil
		}
		err = r.Err
	case <-ctx.Done():
		err = ctx.Err()
	}
	if cached && c.now().Before(e.expires.Add(c.cfg.Stale)) {
		c.stale.Add(1)
		return e.ans, e.found, Stale, nil
	}
	return Answer{}, false, Failed, err
}

// fetchAndStore asks the service, with the fetch timeout and not the
// caller's context: callers that give up do not fail the others waiting
// for the same fetch.
func (c *Cache) fetchAndStore(key string) (*entry, error) {
	epoch := c.epoch.Load()
	// A caller that missed the cache just before another's fetch stored
	// its answer starts a new flight: it finds the answer here instead of
	// asking the service again.
	if e, ok := c.lru.Get(key); ok && c.now().Before(e.expires) {
		return e, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	c.fetches.Add(1)
	ans, found, err := c.fetch(ctx, key)
	if err != nil {
		c.errs.Add(1)
		if ctx.Err() != nil && !errors.Is(err, ErrBadAnswer) {
			err = fmt.Errorf("the lookup service did not answer within %s", c.cfg.Timeout)
		}
		return nil, err
	}
	ttl := c.cfg.TTL
	if !found {
		c.misses.Add(1)
		ttl = c.cfg.NegativeTTL
	}
	e := &entry{ans: ans, found: found, expires: c.now().Add(ttl)}
	if c.epoch.Load() == epoch { // else perhaps read before an invalidation: used once, not kept
		c.lru.Add(key, e)
	}
	return e, nil
}

// Invalidate forgets key's answer (its value changed at the source), so
// that the next Get asks the service; a fetch already under way is not
// joined by later callers.
func (c *Cache) Invalidate(key string) {
	c.epoch.Add(1)
	c.flight.Forget(key)
	c.lru.Remove(key)
}

// Flush forgets every answer (the source may have changed while its
// change notifications were lost).
func (c *Cache) Flush() {
	c.epoch.Add(1)
	c.lru.Purge()
}

// Peek is key's cached answer, if any, without asking the service or
// counting: for the admin API.
func (c *Cache) Peek(key string) (ans Answer, found, cached bool, expires time.Time) {
	e, ok := c.lru.Peek(key)
	if !ok {
		return Answer{}, false, false, time.Time{}
	}
	return e.ans, e.found, true, e.expires
}

// Stats are the cache's counters and size.
func (c *Cache) Stats() CacheStats {
	return CacheStats{Entries: c.lru.Len(), Hits: c.hits.Load(), Fetches: c.fetches.Load(),
		Misses: c.misses.Load(), Errors: c.errs.Load(), Stale: c.stale.Load()}
}
