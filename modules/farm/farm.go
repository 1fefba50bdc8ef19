// Package farm is the pool of upstream members that every Caddy Prelude
// handler dials through: static and DNS-named members, load-balancing
// policies, passive failure marking and failover. Member state (live
// connection counts, failure marks) lives in a caddy.UsagePool keyed by
// address, so it survives config reloads and counts stay right while
// sessions from the previous config are still open.
package farm

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/modules/internal/tlsclient"
)

// Defaults for the options a Farm leaves unset.
const (
	DefaultDialTimeout   = 5 * time.Second
	DefaultDNSRefresh    = 30 * time.Second
	DefaultFailDuration  = 10 * time.Second
	DefaultLBTryInterval = 250 * time.Millisecond
)

// Farm is a set of upstream members and how to pick one. It is embedded by
// handlers as plain JSON; call Provision before Dial and Cleanup after.
type Farm struct {
	// Upstream addresses: host:port, where host is an IP or a DNS name whose
	// every A/AAAA answer becomes a member.
	To []string `json:"to,omitempty"`
	// One of round_robin (default), least_conn, random, first, ip_hash.
	LBPolicy string `json:"lb_policy,omitempty"`
	// Keep cycling through the members for this long before giving up.
	// Zero (the default) means one pass over every member.
	LBTryDuration caddy.Duration `json:"lb_try_duration,omitempty"`
	// Wait between passes while LBTryDuration lasts. Default 250ms.
	LBTryInterval caddy.Duration `json:"lb_try_interval,omitempty"`
	// Connect timeout for each attempt. Default 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// Re-resolve DNS names at this interval. Default 30s.
	DNSRefresh caddy.Duration `json:"dns_refresh,omitempty"`
	// DNS server (host:port) for names in To; the system resolver if empty.
	Resolver string `json:"resolver,omitempty"`
	// A member that fails sits out for this long. Default 10s; -1 disables.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`
	// Most live connections per member; 0 means unlimited.
	MaxConnections int `json:"max_connections,omitempty"`
	// Per-member options (TLS, zone) by address as written; an address
	// listed only here is a member too.
	Upstreams []Upstream `json:"upstreams,omitempty"`
	// A routing table to pick the members by a key per connection: a
	// guest module of namespace layer4.lookups (file, http, redis), named
	// by its "source" key. To, if set, is then the default for keys the
	// table does not hold.
	LookupRaw json.RawMessage `json:"lookup,omitempty" caddy:"namespace=layer4.lookups inline_key=source"`
	// Farms the lookup's answers may name ("farm:blue", {"farm": "blue"})
	// instead of listing addresses: each with its own members, policy,
	// health checks and limits. Only a farm with a lookup has them; they
	// have neither a lookup nor farms of their own.
	Farms map[string]*Farm `json:"farms,omitempty"`
	// Most members a lookup's answers or to addresses with placeholders
	// create and keep (for their failure marks, health checks and
	// metrics); past it the least recently used is dropped. Default 1024.
	MaxDynamicMembers int `json:"max_dynamic_members,omitempty"`
	// A dynamic member no connection has asked for, and with no live
	// connection, for this long is dropped. Default 10m.
	DynamicIdleTimeout caddy.Duration `json:"dynamic_idle_timeout,omitempty"`
	// Send a PROXY protocol header ("v1" or "v2") to members before
	// anything else, so that they see the client's address.
	ProxyProtocol string `json:"proxy_protocol,omitempty"`
	// Try members whose zone is this one first (datacenter affinity).
	PreferZone string `json:"prefer_zone,omitempty"`
	// Probe every member this often with the protocol's health check
	// (SetProbe); members that fail it are skipped until one passes. Zero
	// (the default) turns active checks off.
	HealthInterval caddy.Duration `json:"health_interval,omitempty"`
	// Time one probe may take. Default 2s.
	HealthTimeout caddy.Duration `json:"health_timeout,omitempty"`
	// When a member leaves the farm (its name stops resolving to it, or a
	// config push drops it), also end its live sessions, not only stop
	// sending it new ones. The handler decides how (amqp: Close 320).
	DrainRemoved bool `json:"drain_removed,omitempty"`
	// OnRemoved, set by the handler, is called with each member address
	// that DNS re-resolution drops while DrainRemoved is on.
	OnRemoved func(addr string) `json:"-"`
	// OnMoved, set by the handler, ends the session on upstream whose
	// lookup key now routes elsewhere (Lookup.DrainMoved), and reports
	// whether it found the session (else it is asked again at the next
	// check: the session may not be listed yet). Unset, the upstream
	// connection is closed.
	OnMoved func(upstream net.Conn, key string) bool `json:"-"`

	// Name labels the farm in GET /prelude/farms; set by the handler.
	Name   string `json:"-"`
	probe  ProbeFunc
	cancel context.CancelFunc

	table   *lookupState // the lookup, provisioned from LookupRaw
	targets []target
	// to and upstream addresses with placeholders, expanded per
	// connection (templates.go)
	templates []template
	policy    policy
	dns       *net.Resolver
	mu        sync.Mutex
	names     map[string]resolution // DNS name -> last answers
	current   map[string]bool       // the member set of the last Members call
	known     map[string]*Member    // members this farm holds a pool reference for
	moving    map[*Lease]bool       // drain_moved: live leases routed by the lookup; true once ended
	dynamic   *dynamicMembers       // members found per connection (dynamic.go)
	seq       uint64                // order of provisioning, for handOverMoves
	rr        atomic.Uint64
	ctx       caddy.Context
	events    *caddyevents.App
	logger    *zap.Logger
	checked   atomic.Bool // the first round of health checks is done
}

type target struct {
	host, port string
	ip         net.IP // nil for DNS names
	srv        string // the SRV name of a srv+ address
	opts       memberOpts
}

// Upstream holds options for the members of one address.
type Upstream struct {
	// host:port, as in To.
	Address string `json:"address"`
	// TLS to the member (amqps, say). The server name defaults to the host.
	TLS *tlsclient.Config `json:"tls,omitempty"`
	// A datacenter or zone tag, for prefer_zone.
	Zone string `json:"zone,omitempty"`
}

// memberOpts are an address's options, built.
type memberOpts struct {
	tls  *tls.Config
	zone string
}

type resolution struct {
	addrs []string
	at    time.Time
	err   error
}

// memberState is shared through the usage pool by every farm (and every
// config generation) that names the same address.
type memberState struct {
	active      atomic.Int64
	failedUntil atomic.Int64 // unix nanoseconds
	health      health
}

func (*memberState) Destruct() error { return nil }

var members = caddy.NewUsagePool()

// Member is one upstream address with its shared state.
type Member struct {
	Addr  string
	Zone  string
	tls   *tls.Config
	state *memberState
}

// Active is the number of live connections to the member, across reloads.
func (m *Member) Active() int64 { return m.state.active.Load() }

// Failed reports whether the member is sitting out after a failure.
func (m *Member) Failed(now time.Time) bool { return m.state.failedUntil.Load() > now.UnixNano() }

// Provision applies defaults, parses the addresses and registers the member
// metrics on the config's registry.
func (f *Farm) Provision(ctx caddy.Context) error {
	registerMetrics(ctx.GetMetricsRegistry())
	f.ctx, f.logger = ctx, ctx.Logger()
	if app, err := ctx.AppIfConfigured("events"); err == nil { // no events app: no subscribers
		f.events, _ = app.(*caddyevents.App)
	}
	if f.DialTimeout == 0 {
		f.DialTimeout = caddy.Duration(DefaultDialTimeout)
	}
	if f.DNSRefresh == 0 {
		f.DNSRefresh = caddy.Duration(DefaultDNSRefresh)
	}
	if f.FailDuration == 0 {
		f.FailDuration = caddy.Duration(DefaultFailDuration)
	}
	if f.LBTryInterval == 0 {
		f.LBTryInterval = caddy.Duration(DefaultLBTryInterval)
	}
	if f.MaxDynamicMembers == 0 {
		f.MaxDynamicMembers = DefaultMaxDynamicMembers
	}
	if f.DynamicIdleTimeout == 0 {
		f.DynamicIdleTimeout = caddy.Duration(DefaultDynamicIdleTimeout)
	}
	if err := f.Validate(); err != nil {
		return err
	}
	f.policy = policies[f.policyName()]
	f.targets = f.targets[:0]
	f.templates = f.templates[:0]
	opts := map[string]memberOpts{}
	addrs := append([]string(nil), f.To...)
	for _, u := range f.Upstreams {
		cfg, err := u.TLS.Build()
		if err != nil {
			return fmt.Errorf("upstreams %s: %v", u.Address, err)
		}
		if cfg != nil && cfg.ServerName == "" && !isTemplate(u.Address) {
			cfg.ServerName, _, _ = net.SplitHostPort(u.Address)
		}
		opts[u.Address] = memberOpts{tls: cfg, zone: u.Zone}
		if !slices.Contains(addrs, u.Address) {
			addrs = append(addrs, u.Address)
		}
	}
	for _, a := range addrs {
		if isTemplate(a) {
			f.templates = append(f.templates, template{addr: a, opts: opts[a]})
			continue
		}
		if name, ok := strings.CutPrefix(a, "srv+"); ok {
			f.targets = append(f.targets, target{srv: name, opts: opts[a]})
			continue
		}
		host, port, _ := net.SplitHostPort(a)
		f.targets = append(f.targets, target{host: host, port: port, ip: net.ParseIP(host), opts: opts[a]})
	}
	f.dns = net.DefaultResolver
	if f.Resolver != "" {
		addr := f.Resolver
		f.dns = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
	}
	f.names = map[string]resolution{}
	f.known = map[string]*Member{}
	for _, t := range f.targets { // hold static members' state from the start
		if t.ip != nil {
			f.member(net.JoinHostPort(t.host, t.port), t.opts)
		}
	}
	hctx, cancel := context.WithCancel(ctx)
	f.cancel = cancel
	if err := f.provisionNamed(ctx); err != nil {
		cancel()
		return err
	}
	if f.PerConnection() {
		f.dynamic = newDynamicMembers(f.MaxDynamicMembers)
		go every(hctx, sweepInterval(time.Duration(f.DynamicIdleTimeout)), func() {
			f.dynamic.dropIdle(time.Now(), time.Duration(f.DynamicIdleTimeout))
		})
	}
	if f.LookupRaw != nil {
		if err := f.provisionLookup(ctx); err != nil {
			cancel()
			return err
		}
		if f.table.opts.DrainMoved {
			go every(hctx, DrainCheckInterval, func() { f.drainMoved(hctx) })
		}
	}
	f.startHealthChecks(hctx)
	f.startRefresh(hctx)
	farmsMu.Lock()
	f.seq = farmSeq.Add(1)
	farms[f] = struct{}{}
	farmsMu.Unlock()
	f.logger.Info("farm", zap.String("farm", f.Name), zap.String("members", f.Describe()),
		zap.String("lb_policy", f.policyName()))
	return nil
}

func (f *Farm) policyName() string {
	if f.LBPolicy == "" {
		return "round_robin"
	}
	return f.LBPolicy
}

// HasLookup reports whether the farm routes by a lookup (configured, or
// provisioned).
func (f *Farm) HasLookup() bool { return f.LookupRaw != nil || f.table != nil }

// Describe is the farm in a few words for a start-up log line: its
// addresses (placeholders unexpanded), its lookup, its named farms.
func (f *Farm) Describe() string {
	parts := append([]string(nil), f.To...)
	for _, u := range f.Upstreams {
		if u.TLS != nil {
			parts = append(parts, u.Address+" (tls)")
		} else {
			parts = append(parts, u.Address)
		}
	}
	if f.HasLookup() {
		parts = append(parts, "lookup")
	}
	names := make([]string, 0, len(f.Farms))
	for name := range f.Farms {
		names = append(names, "farm "+name)
	}
	sort.Strings(names)
	return strings.Join(append(parts, names...), ", ")
}

// Validate reports the first invalid option by its JSON name.
func (f *Farm) Validate() error {
	if len(f.To) == 0 && len(f.Upstreams) == 0 && !f.HasLookup() {
		return errors.New("to: at least one upstream address is required (or a lookup)")
	}
	if f.ProxyProtocol != "" && f.ProxyProtocol != "v1" && f.ProxyProtocol != "v2" {
		return fmt.Errorf("proxy_protocol: %q is not v1 or v2", f.ProxyProtocol)
	}
	all := append([]string(nil), f.To...)
	for _, u := range f.Upstreams {
		all = append(all, u.Address)
	}
	for _, a := range all {
		if isTemplate(a) {
			continue // checked per connection, once expanded
		}
		if name, ok := strings.CutPrefix(a, "srv+"); ok {
			if !strings.HasPrefix(name, "_") || strings.Contains(name, ":") {
				return fmt.Errorf("to: %q is not srv+_service._proto.name", a)
			}
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("to: %q is not host:port", a)
		}
	}
	if _, ok := policies[f.policyName()]; !ok {
		return fmt.Errorf("lb_policy: unknown policy %q (want one of %s)", f.LBPolicy, policyNames())
	}
	if f.LBTryDuration < 0 || f.DialTimeout < 0 || f.DNSRefresh < 0 || f.LBTryInterval < 0 || f.HealthInterval < 0 || f.HealthTimeout < 0 {
		return errors.New("lb_try_duration, lb_try_interval, dial_timeout, dns_refresh, health_interval, health_timeout: must not be negative")
	}
	if f.MaxConnections < 0 {
		return errors.New("max_connections: must not be negative")
	}
	if f.MaxDynamicMembers < 0 || f.DynamicIdleTimeout < 0 {
		return errors.New("max_dynamic_members, dynamic_idle_timeout: must not be negative")
	}
	if err := f.validateNamed(); err != nil {
		return err
	}
	if f.Resolver != "" {
		if _, _, err := net.SplitHostPort(f.Resolver); err != nil {
			return fmt.Errorf("resolver: %q is not host:port", f.Resolver)
		}
	}
	return nil
}

// Cleanup releases this farm's references to shared member state.
func (f *Farm) Cleanup() error {
	if f.cancel != nil {
		f.cancel()
	}
	f.handOverMoves()
	f.handOverDynamic()
	f.cleanupNamed()
	farmsMu.Lock()
	delete(farms, f)
	farmsMu.Unlock()
	if f.table != nil {
		unregisterLookup(f.table)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for addr := range f.known {
		_, _ = members.Delete(poolKey(addr))
	}
	f.known = nil
	return nil
}

// member returns the farm's handle on addr, taking one reference on its
// shared state the first time this farm meets the address.
func (f *Farm) member(addr string, opts memberOpts) *Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m, ok := f.known[addr]; ok {
		return m
	}
	st := new(memberState)
	if f.known != nil {
		v, _ := members.LoadOrStore(poolKey(addr), st)
		st = v.(*memberState)
	}
	m := &Member{Addr: addr, Zone: opts.zone, tls: opts.tls, state: st}
	if f.known != nil {
		f.known[addr] = m
	}
	return m
}

const poolKeyPrefix = "prelude.farm.member/"

func poolKey(addr string) string { return poolKeyPrefix + addr }

// Events the farm and its handlers emit on Caddy's event bus.
const (
	// EventConnectError: a member could not be dialed. Data: upstream, error.
	EventConnectError = "upstream_connect_error"
	// EventInactivityTimeout: a member sent nothing within the handler's
	// timeout. Data: upstream, timeout.
	EventInactivityTimeout = "upstream_inactivity_timeout"
	// EventUnhealthy: a member failed its active health check. Data:
	// upstream, error.
	EventUnhealthy = "upstream_unhealthy"
	// EventHealthy: an unhealthy member passed its check again. Data: upstream.
	EventHealthy = "upstream_healthy"
	// EventNoMemberHealthy: the first round of health checks after the
	// config loaded found no member healthy. Data: farm, tried.
	EventNoMemberHealthy = "farm_no_member_healthy"
)

// Emit logs an upstream problem at warn level and emits it as a Caddy event,
// so that operators can alert on it (ProxyMachine's proxy_connect_error and
// proxy_inactivity_error callbacks).
func (f *Farm) Emit(event string, data map[string]any) {
	if f.logger != nil {
		fields := make([]zap.Field, 0, len(data))
		for k, v := range data {
			fields = append(fields, zap.Any(k, v))
		}
		f.logger.Warn(event, fields...)
	}
	if f.events != nil {
		f.events.Emit(f.ctx, event, data)
	}
}
