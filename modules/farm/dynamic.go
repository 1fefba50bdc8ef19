package farm

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Defaults for the members a farm finds per connection.
const (
	DefaultMaxDynamicMembers  = 1024
	DefaultDynamicIdleTimeout = 10 * time.Minute
)

// dynamicMembers are the members a farm's lookup answers and to templates
// name, kept between connections so that a member's failure mark, active
// health and metrics outlive the connection that found it (as Caddy's
// reverse proxy keeps its dynamic upstreams). Each holds one reference on
// the member's shared state. The set is bounded: past its size the least
// recently used member is dropped, and dropIdle drops members no
// connection asked for within the idle timeout. A dropped member's live
// connections still count: each lease holds its own reference.
type dynamicMembers struct {
	mu  sync.Mutex
	lru *simplelru.LRU[string, *dynamicMember]
}

type dynamicMember struct {
	m    *Member
	seen time.Time // the last connection that asked for it
}

func newDynamicMembers(size int) *dynamicMembers {
	lru, err := simplelru.NewLRU(size, func(addr string, _ *dynamicMember) {
		_, _ = members.Delete(poolKey(addr))
	})
	if err != nil { // size is checked positive by Provision
		panic(err)
	}
	return &dynamicMembers{lru: lru}
}

// get returns the member for addr, creating it on first use, and marks it
// seen now.
func (d *dynamicMembers) get(addr string, now time.Time) *Member {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.lru.Get(addr); ok {
		e.seen = now
		return e.m
	}
	st := new(memberState)
	v, _ := members.LoadOrStore(poolKey(addr), st)
	m := &Member{Addr: addr, state: v.(*memberState)}
	d.lru.Add(addr, &dynamicMember{m: m, seen: now})
	return m
}

// adopt takes over a member another farm found (a config reload), unless
// this set has it already.
func (d *dynamicMembers) adopt(e *dynamicMember) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.lru.Contains(e.m.Addr) {
		return
	}
	v, _ := members.LoadOrStore(poolKey(e.m.Addr), e.m.state)
	d.lru.Add(e.m.Addr, &dynamicMember{m: &Member{Addr: e.m.Addr, state: v.(*memberState)}, seen: e.seen})
}

// list is the members, least recently used first.
func (d *dynamicMembers) list() []*dynamicMember {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lru.Values()
}

// has reports whether addr is one of the members.
func (d *dynamicMembers) has(addr string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lru.Contains(addr)
}

// dropIdle drops the members not asked for since idle before now and
// with no live connection.
func (d *dynamicMembers) dropIdle(now time.Time, idle time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, addr := range d.lru.Keys() {
		e, _ := d.lru.Peek(addr)
		if now.Sub(e.seen) > idle && e.m.Active() == 0 {
			d.lru.Remove(addr)
		}
	}
}

// purge drops every member.
func (d *dynamicMembers) purge() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lru.Purge()
}

// sweepInterval is how often idle members are looked for: a quarter of
// the idle timeout, at most a minute.
func sweepInterval(idle time.Duration) time.Duration {
	return max(min(idle/4, time.Minute), 10*time.Millisecond)
}

// dynamicMember returns the connection's member for addr: one of the
// farm's dynamic members, or, before Provision, one that only leases hold.
func (f *Farm) dynamicMember(addr string) *Member {
	if f.dynamic == nil {
		return transientMember(addr)
	}
	return f.dynamic.get(addr, time.Now())
}

// transientMember is a member that the farm keeps no reference to: it
// shares the state that leases and farms hold for the address while they
// hold it.
func transientMember(addr string) *Member {
	st := new(memberState)
	v, _ := members.LoadOrStore(poolKey(addr), st)
	_, _ = members.Delete(poolKey(addr))
	return &Member{Addr: addr, state: v.(*memberState)}
}

// handOverDynamic gives f's dynamic members to the farm of the config
// that replaces f's (the newest other farm with f's name), so that their
// failure marks and health outlive a reload; then drops them from f.
// Called at f's cleanup, after the new config is provisioned.
func (f *Farm) handOverDynamic() {
	if f.dynamic == nil {
		return
	}
	if next := f.newestNamesake(); next != nil && next.dynamic != nil {
		for _, e := range f.dynamic.list() {
			next.dynamic.adopt(e)
		}
	}
	f.dynamic.purge()
}

// newestNamesake is the newest farm with f's name provisioned after f.
func (f *Farm) newestNamesake() *Farm {
	farmsMu.Lock()
	defer farmsMu.Unlock()
	var best *Farm
	for g := range farms {
		if g.seq > f.seq && g.Name == f.Name && (best == nil || g.seq > best.seq) {
			best = g
		}
	}
	return best
}
