package farm

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/lookup"
)

// A LookupSource is a routing table: a guest module of the farm in the
// namespace layer4.lookups (file, http, redis; lookup_sources.go), chosen
// by the "source" key of a farm's "lookup" object. A connection's key,
// built from its placeholders, is looked up: a hit is the farm's members
// for that connection (or a refusal with a reason), a miss falls through
// to the farm's to (the default) or, without to, is refused with a
// NoRouteError naming the key.
//
// A source embeds LookupOptions, the options every source has.
type LookupSource interface {
	// Resolve answers key: found false for a key the table does not
	// hold; an error when the source failed and nothing could be served.
	Resolve(ctx context.Context, key string) (ans lookup.Answer, found bool, res lookup.Result, err error)
	// Status is the source's state for GET /prelude/lookups.
	Status() SourceStatus
	// Common is the source's LookupOptions.
	Common() *LookupOptions
}

// LookupOptions are the options of every lookup source.
type LookupOptions struct {
	// The key, with placeholders: "{l4.git.owner}", say.
	Key string `json:"key"`
	// Names the lookup in GET /prelude/lookups and metrics. Default: the
	// farm's name ("git", "amqp default", …).
	Name string `json:"name,omitempty"`
	// When a key's route changes, also end the live sessions that went by
	// the old route, not only send new ones to the new place. The handler
	// decides how (amqp: Close 320 at a frame boundary; git: the
	// connection is closed). Checked every DrainCheckInterval.
	DrainMoved bool `json:"drain_moved,omitempty"`
}

// Common returns o, so that a source embedding LookupOptions has it.
func (o *LookupOptions) Common() *LookupOptions { return o }

// SourceStatus is what a source says about itself in the admin API:
// where it reads (a path, or a URL without its password), how many keys
// it holds (a table) or keeps (a cache), its cache's counters, and a
// file's last reload error.
type SourceStatus struct {
	Where string
	Size  int
	Cache *lookup.CacheStats
	Error string
}

// lookupState is a farm's provisioned lookup: its source and what the
// farm keeps about it (name, default, counters).
type lookupState struct {
	src      LookupSource
	opts     *LookupOptions
	source   string // the module's name: file, http, redis
	name     string
	defaults []string         // the farm's to, where a miss goes
	farms    map[string]*Farm // the farm's named farms, which answers may name
	counts   lookupCounters
	logger   *zap.Logger
}

// NoRouteError is a connection whose key the lookup does not hold, with
// no default to fall through to, or whose key is unusable, or whose
// lookup failed.
type NoRouteError struct {
	Key    string
	Reason string // why, when the key itself is the problem
}

func (e *NoRouteError) Error() string {
	if e.Reason != "" {
		return fmt.Sprintf("no route for key %q: %s", e.Key, e.Reason)
	}
	return fmt.Sprintf("no route for key %q", e.Key)
}

// RefusedError is a connection the lookup's answer refuses, with the
// answer's reason, to be told to the client (AMQP: Close 403; git: ERR).
type RefusedError struct {
	Key    string
	Reason string
}

func (e *RefusedError) Error() string { return e.Reason }

// provisionLookup loads the farm's lookup source module.
func (f *Farm) provisionLookup(ctx caddy.Context) error {
	mod, err := ctx.LoadModule(f, "LookupRaw")
	if err != nil {
		return fmt.Errorf("lookup: %v", err)
	}
	src, ok := mod.(LookupSource)
	if !ok {
		return fmt.Errorf("lookup: module %T is not a lookup source", mod)
	}
	info := mod.(caddy.Module).CaddyModule()
	opts := src.Common()
	if opts.Key == "" {
		return errors.New("lookup: a key is required, e.g. key {l4.git.owner}")
	}
	l := &lookupState{src: src, opts: opts, source: info.ID.Name(),
		name: opts.Name, defaults: f.To, farms: f.Farms, logger: f.logger}
	if l.name == "" {
		l.name = f.Name
	}
	f.table = l
	registerLookup(l)
	return nil
}

// resolve returns the answer for the connection in ctx (its placeholders,
// WithReplacer), or ok false on a miss.
func (l *lookupState) resolve(ctx context.Context) (key string, ans lookup.Answer, ok bool, err error) {
	key = replacerOf(ctx).ReplaceAll(l.opts.Key, "")
	switch {
	case key == "":
		return key, ans, false, &NoRouteError{Key: key, Reason: "the key is empty"}
	case len(key) > lookup.MaxKeyLen:
		return key[:64] + "…", ans, false, &NoRouteError{Key: key[:64] + "…", Reason: fmt.Sprintf("the key is longer than %d bytes", lookup.MaxKeyLen)}
	}
	ans, ok, res, err := l.src.Resolve(ctx, key)
	if err != nil {
		l.counts[resultError].Add(1)
		l.logger.Warn("lookup failed", zap.String("lookup", l.name), zap.String("where", l.src.Status().Where),
			zap.String("key", key), zap.Error(err))
		// The client learns that the lookup failed, not the service's
		// address or its answer.
		return key, ans, false, &NoRouteError{Key: key, Reason: "the route lookup failed"}
	}
	l.count(ok, ans, res)
	return key, ans, ok, nil
}

func (l *lookupState) count(found bool, ans lookup.Answer, res lookup.Result) {
	switch {
	case !found:
		l.counts[resultMiss].Add(1)
	case ans.Refuse != "":
		l.counts[resultRefused].Add(1)
	case res == lookup.Stale:
		l.counts[resultStale].Add(1)
	default:
		l.counts[resultHit].Add(1)
	}
}

// current is key's answer now, as a new connection would get it, without
// counting it as a client's lookup.
func (l *lookupState) current(ctx context.Context, key string) (lookup.Answer, bool, error) {
	ans, ok, _, err := l.src.Resolve(ctx, key)
	if err != nil {
		l.logger.Debug("drain_moved: lookup failed; sessions kept", zap.String("key", key), zap.Error(err))
	}
	return ans, ok, err
}

// setClientIP sets {l4.conn.remote_ip}, the client's address without its
// port, on the connection's replacer (WithReplacer), for lookup keys and
// to addresses: caddy-l4 sets only {l4.conn.remote_addr}, with the port.
func setClientIP(ctx context.Context, client net.Addr) {
	repl, ok := ctx.Value(replacerKey{}).(*caddy.Replacer)
	if !ok || repl == nil || client == nil {
		return
	}
	ip := client.String()
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	repl.Set("l4.conn.remote_ip", ip)
}

type replacerKey struct{}

// replacerOf is the connection's replacer (WithReplacer), or one with the
// global placeholders only.
func replacerOf(ctx context.Context) *caddy.Replacer {
	if repl, ok := ctx.Value(replacerKey{}).(*caddy.Replacer); ok && repl != nil {
		return repl
	}
	return caddy.NewReplacer()
}

// WithReplacer gives Dial the connection's placeholders, from which a
// lookup builds its key.
func WithReplacer(ctx context.Context, repl *caddy.Replacer) context.Context {
	return context.WithValue(ctx, replacerKey{}, repl)
}

// connectionRoute is where a connection may go, as far as it depends on
// the connection (connectionMembers).
type connectionRoute struct {
	members []*Member // the answer's or the expanded templates' members
	only    bool      // members replace the farm's static members
	via     *Farm     // the named farm the answer names
	rt      route     // the lookup's key and answer, for drain_moved
}

// connectionMembers is the members that depend on the connection: a
// lookup's answer, which replaces the farm's other members (only), or
// names one of its farms (via), or to addresses with placeholders,
// expanded, which join the static ones. Nothing set: the static members
// only.
func (f *Farm) connectionMembers(ctx context.Context) (cr connectionRoute, err error) {
	if f.table != nil {
		key, ans, ok, err := f.table.resolve(ctx)
		if err != nil {
			return cr, err
		}
		if ok && ans.Refuse != "" {
			return cr, &RefusedError{Key: key, Reason: ans.Refuse}
		}
		cr.rt = route{key: key, hit: ok, set: true, farm: ans.Farm}
		switch {
		case ok && ans.Farm != "":
			if cr.via = f.Farms[ans.Farm]; cr.via == nil {
				f.logger.Warn("lookup answer names a farm this config does not define",
					zap.String("lookup", f.table.name), zap.String("key", key), zap.String("farm", ans.Farm))
				// The client learns its key has no route, not the farm's name.
				return cr, &NoRouteError{Key: key, Reason: "its route names a farm this proxy does not have"}
			}
			return cr, nil
		case ok:
			cr.members, cr.only = make([]*Member, 0, len(ans.Addrs)), true
			for _, a := range ans.Addrs {
				cr.members = append(cr.members, f.dynamicMember(a, memberOpts{}))
			}
			return cr, nil
		case len(f.targets) == 0 && len(f.templates) == 0:
			return cr, &NoRouteError{Key: key}
		}
	}
	for _, tmpl := range f.templates {
		addr, err := expandAddress(ctx, tmpl.addr)
		if err != nil {
			return cr, err
		}
		cr.members = append(cr.members, f.dynamicMember(addr, tmpl.opts))
	}
	return cr, nil
}
