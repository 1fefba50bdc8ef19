package farm

import (
	"context"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultHealthTimeout bounds one active probe.
const DefaultHealthTimeout = 2 * time.Second

// ProbeFunc speaks the protocol on a fresh connection to a member and
// returns nil when the member answers as a healthy server should (the amqp
// handler: Connection.Start after the protocol header).
type ProbeFunc func(ctx context.Context, conn net.Conn) error

// SetProbe gives the farm its protocol-aware health probe; call it before
// Provision. Without a probe, health checks only connect.
func (f *Farm) SetProbe(p ProbeFunc) { f.probe = p }

// health is a member's active health, shared like the rest of its state.
type health struct {
	mu        sync.Mutex
	unhealthy bool
	lastCheck time.Time
	lastErr   string
}

func (h *health) set(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastCheck = time.Now()
	h.unhealthy = err != nil
	h.lastErr = ""
	if err != nil {
		h.lastErr = err.Error()
	}
}

func (h *health) get() (unhealthy bool, at time.Time, lastErr string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.unhealthy, h.lastCheck, h.lastErr
}

// Unhealthy reports whether the last active probe of the member failed.
func (m *Member) Unhealthy() bool {
	u, _, _ := m.state.health.get()
	return u
}

// startHealthChecks probes every member each health_interval until ctx
// ends, the first time one interval after the config loads (members start
// healthy).
func (f *Farm) startHealthChecks(ctx context.Context) {
	if f.HealthInterval <= 0 {
		return
	}
	go every(ctx, time.Duration(f.HealthInterval), func() { f.checkAll(ctx) })
}

// every runs f each interval until ctx ends, the first time one interval
// from now.
func every(ctx context.Context, interval time.Duration, f func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// checkAll probes the static members and the dynamic ones (dynamic.go).
func (f *Farm) checkAll(ctx context.Context) {
	ms, _ := f.Members(ctx)
	if f.dynamic != nil {
		for _, e := range f.dynamic.list() {
			ms = append(ms, e.m)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f.check(ctx, m)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				mu.Lock()
				failed = append(failed, m.Addr+": "+err.Error())
				mu.Unlock()
			}
			was := m.Unhealthy()
			m.state.health.set(err)
			switch {
			case err != nil && !was:
				f.Emit(EventUnhealthy, map[string]any{"upstream": m.Addr, "error": err.Error()})
			case err == nil && was:
				f.Emit(EventHealthy, map[string]any{"upstream": m.Addr})
			}
		}()
	}
	wg.Wait()
	if ctx.Err() == nil && !f.checked.Swap(true) && len(ms) > 0 && len(failed) == len(ms) {
		sort.Strings(failed)
		f.Emit(EventNoMemberHealthy, map[string]any{"farm": f.Name, "tried": strings.Join(failed, "; ")})
	}
}

// check connects to m (with its TLS and PROXY header) and runs the probe.
func (f *Farm) check(ctx context.Context, m *Member) error {
	timeout := time.Duration(f.HealthTimeout)
	if timeout <= 0 {
		timeout = DefaultHealthTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := f.connect(ctx, m, nil)
	if err != nil {
		return trimOpError(err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if f.probe == nil {
		return nil
	}
	return f.probe(ctx, conn)
}

// Registry of provisioned farms, for GET /prelude/farms.
var (
	farmsMu sync.Mutex
	farms   = map[*Farm]struct{}{}
	farmSeq atomic.Uint64
)

// MemberStatus is one member as GET /prelude/farms reports it.
type MemberStatus struct {
	Address string `json:"address"`
	Zone    string `json:"zone,omitempty"`
	Active  int64  `json:"active"`
	Failed  bool   `json:"failed"` // sitting out after a failure (fail_duration)
	// Passes its active health check (or has none) and is not sitting out:
	// the member takes connections.
	Healthy     bool       `json:"healthy"`
	LastCheck   *time.Time `json:"last_check,omitempty"`
	HealthError string     `json:"health_error,omitempty"`
	// Found by a lookup or a to template, and kept while asked for
	// (max_dynamic_members, dynamic_idle_timeout).
	Dynamic bool `json:"dynamic,omitempty"`
}

// Status is one farm as GET /prelude/farms reports it.
type Status struct {
	Name           string         `json:"name"`
	Policy         string         `json:"lb_policy"`
	HealthInterval string         `json:"health_interval,omitempty"`
	Members        []MemberStatus `json:"members"`
}

// Farms returns every farm of the loaded configs with its members' state.
// DNS names are not resolved for it: members appear once resolved.
func Farms() []Status {
	farmsMu.Lock()
	list := make([]*Farm, 0, len(farms))
	for f := range farms {
		list = append(list, f)
	}
	farmsMu.Unlock()
	now := time.Now()
	out := make([]Status, 0, len(list))
	for _, f := range list {
		st := Status{Name: f.Name, Policy: f.policyName()}
		if f.HealthInterval > 0 {
			st.HealthInterval = time.Duration(f.HealthInterval).String()
		}
		f.mu.Lock()
		ms := make([]*Member, 0, len(f.known))
		for _, m := range f.known {
			ms = append(ms, m)
		}
		f.mu.Unlock()
		static := len(ms)
		if f.dynamic != nil {
			for _, e := range f.dynamic.list() {
				ms = append(ms, e.m)
			}
		}
		sort.SliceStable(ms[:static], func(i, j int) bool { return ms[i].Addr < ms[j].Addr })
		sort.SliceStable(ms[static:], func(i, j int) bool { return ms[static+i].Addr < ms[static+j].Addr })
		for i, m := range ms {
			unhealthy, at, herr := m.state.health.get()
			failed := m.Failed(now)
			ms := MemberStatus{Address: m.Addr, Zone: m.Zone, Active: m.Active(), Failed: failed, Healthy: !unhealthy && !failed,
				HealthError: herr, Dynamic: i >= static}
			if !at.IsZero() {
				ms.LastCheck = &at
			}
			st.Members = append(st.Members, ms)
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
