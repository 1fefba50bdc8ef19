package farm

import (
	"net"
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

// get returns the member for addr, creating it with opts on first use,
// and marks it seen now.
func (d *dynamicMembers) get(addr string, opts memberOpts, now time.Time) *Member {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.lru.Get(addr); ok {
		e.seen = now
		return e.m
	}
	m := newDynamicMember(addr, opts)
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
	m := *e.m
	m.state = v.(*memberState)
	d.lru.Add(e.m.Addr, &dynamicMember{m: &m, seen: e.seen})
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

// dynamicMember returns the connection's member for addr, with opts: one
// of the farm's dynamic members, or, before Provision, one that only
// leases hold.
func (f *Farm) dynamicMember(addr string, opts memberOpts) *Member {
	if f.dynamic == nil {
		m := newDynamicMember(addr, opts)
		_, _ = members.Delete(poolKey(addr))
		return m
	}
	return f.dynamic.get(addr, opts, time.Now())
}

// newDynamicMember is a member for addr holding one reference on its
// shared state, with opts; TLS without a server name of its own names
// addr's host (an upstream block with placeholders knows it only now).
func newDynamicMember(addr string, opts memberOpts) *Member {
	st := new(memberState)
	v, _ := members.LoadOrStore(poolKey(addr), st)
	m := &Member{Addr: addr, Zone: opts.zone, tls: opts.tls, state: v.(*memberState)}
	if m.tls != nil && m.tls.ServerName == "" {
		m.tls = m.tls.Clone()
		m.tls.ServerName, _, _ = net.SplitHostPort(addr)
	}
	return m
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
