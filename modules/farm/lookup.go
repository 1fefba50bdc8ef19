package farm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/lookup"
)

// Lookup routes each connection by a key looked up in a routing table
// instead of a fixed list of addresses: a hit is the farm's members for
// that connection (or a refusal with a reason), a miss falls through to
// To (the default) or, without To, is refused with a NoRouteError naming
// the key.
//
// Sources:
//   - "file": a TSV file of `key<TAB>address[,address…]` lines, read again
//     within Refresh of being replaced (lookup.File);
//   - "http": GET URL with {key} replaced, answering JSON (lookup.HTTP);
//   - "redis": the string Prefix+key, or the field key of Hash
//     (lookup.Redis), invalidated by keyspace notifications.
//
// http and redis answers are kept in a lookup.Cache (TTL, NegativeTTL,
// Stale, Timeout, MaxEntries).
type Lookup struct {
	// Names the lookup in GET /prelude/lookups and metrics. Default: the
	// farm's name ("git", "amqp default", …).
	Name string `json:"name,omitempty"`
	// Where the table comes from: "file", "http" or "redis".
	Source string `json:"source"`
	// The table's path, for "file".
	Path string `json:"path,omitempty"`
	// The service: for "http" a URL template holding {key}; for "redis"
	// redis://[user:password@]host:port[/db].
	URL string `json:"url,omitempty"`
	// The key, with placeholders: "{l4.git.owner}", say.
	Key string `json:"key"`
	// How often the file is checked for changes. Default 250ms.
	Refresh caddy.Duration `json:"refresh,omitempty"`
	// For "redis": the string key read is Prefix+key (default
	// "prelude:route:"), unless Hash is set: then the field key of the
	// hash Hash.
	Prefix string `json:"prefix,omitempty"`
	Hash   string `json:"hash,omitempty"`
	// The cache of "http" and "redis" answers: how long an answer is used
	// (default 30s), how long "no such key" is (default 5s), how long an
	// expired answer is still served while the service fails (default
	// 1m; -1 never), how long one request may take (default 1s), and the
	// most keys kept (default 100000).
	TTL         caddy.Duration `json:"ttl,omitempty"`
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	Stale       caddy.Duration `json:"stale,omitempty"`
	Timeout     caddy.Duration `json:"timeout,omitempty"`
	MaxEntries  int            `json:"max_entries,omitempty"`
	// When a key's route changes, also end the live sessions that went by
	// the old route, not only send new ones to the new place. The handler
	// decides how (amqp: Close 320 at a frame boundary; git: the
	// connection is closed). Checked every DrainCheckInterval.
	DrainMoved bool `json:"drain_moved,omitempty"`

	file     *lookup.File
	cache    *lookup.Cache
	name     string
	where    string   // the source, for logs and the admin API, without secrets
	defaults []string // the farm's to, where a miss goes
	counts   lookupCounters
	logger   *zap.Logger
}

// Lookup defaults.
const (
	DefaultLookupRefresh     = 250 * time.Millisecond
	DefaultLookupTTL         = 30 * time.Second
	DefaultLookupNegativeTTL = 5 * time.Second
	DefaultLookupStale       = time.Minute
	DefaultLookupTimeout     = time.Second
	DefaultLookupMaxEntries  = 100_000
	DefaultRedisPrefix       = "prelude:route:"
)

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

func (l *Lookup) validate() error {
	switch {
	case l.Key == "":
		return errors.New("lookup: a key is required, e.g. key {l4.git.owner}")
	case l.Refresh < 0 || l.TTL < 0 || l.NegativeTTL < 0 || l.Timeout < 0 || l.MaxEntries < 0 || l.Stale < -1:
		return errors.New("lookup: durations and max_entries must not be negative (stale -1 turns it off)")
	}
	switch l.Source {
	case "file":
		if l.Path == "" {
			return errors.New("lookup file: a path is required")
		}
	case "http", "redis":
		if l.URL == "" {
			return fmt.Errorf("lookup %s: a URL is required", l.Source)
		}
	default:
		return fmt.Errorf("lookup: unknown source %q (want file, http or redis)", l.Source)
	}
	return nil
}

// provision reads the table or connects to the service (a config with a
// table that cannot be read does not load; a service that is down does
// not stop the load) and watches it for the config's lifetime.
func (l *Lookup) provision(ctx context.Context, logger *zap.Logger) error {
	l.logger = logger
	if l.Source == "file" {
		return l.provisionFile(ctx)
	}
	cfg := lookup.CacheConfig{
		TTL:         orDefault(l.TTL, DefaultLookupTTL),
		NegativeTTL: orDefault(l.NegativeTTL, DefaultLookupNegativeTTL),
		Stale:       orDefault(l.Stale, DefaultLookupStale),
		Timeout:     orDefault(l.Timeout, DefaultLookupTimeout),
		MaxEntries:  l.MaxEntries,
	}
	if l.Stale < 0 {
		cfg.Stale = 0
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultLookupMaxEntries
	}
	if l.Source == "http" {
		return l.provisionHTTP(cfg)
	}
	return l.provisionRedis(ctx, cfg)
}

func orDefault(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

func (l *Lookup) provisionFile(ctx context.Context) error {
	if l.Refresh == 0 {
		l.Refresh = caddy.Duration(DefaultLookupRefresh)
	}
	f, err := lookup.OpenFile(l.Path)
	if err != nil {
		return fmt.Errorf("lookup file: %w", err)
	}
	f.Loaded = func(t *lookup.Table, err error) {
		if err != nil {
			l.logger.Error("lookup file not reloaded: keeping the last good table", zap.String("path", l.Path), zap.Error(err))
			return
		}
		l.logger.Info("lookup file reloaded", zap.String("path", l.Path), zap.Int("keys", t.Len()))
	}
	l.file = f
	l.where = l.Path
	go f.Watch(ctx, time.Duration(l.Refresh))
	return nil
}

// lookupTransport is shared by every http lookup: connections to a
// service are kept and reused across keys and config reloads.
var lookupTransport = &http.Transport{
	Proxy:               nil, // the service is the operator's own; no HTTP_PROXY detour
	DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	MaxIdleConns:        256,
	MaxIdleConnsPerHost: 64,
	IdleConnTimeout:     90 * time.Second,
	ForceAttemptHTTP2:   true,
}

func (l *Lookup) provisionHTTP(cfg lookup.CacheConfig) error {
	h, err := lookup.NewHTTP(l.URL, &http.Client{Transport: lookupTransport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }})
	if err != nil {
		return err
	}
	l.where = h.String()
	l.cache, err = lookup.NewCache(cfg, h.Fetch)
	if err != nil {
		return fmt.Errorf("lookup http: %w", err)
	}
	return nil
}

func (l *Lookup) provisionRedis(ctx context.Context, cfg lookup.CacheConfig) error {
	if l.Prefix == "" && l.Hash == "" {
		l.Prefix = DefaultRedisPrefix
	}
	r, err := lookup.NewRedis(l.URL, l.Prefix, l.Hash)
	if err != nil {
		return err
	}
	l.where = r.String()
	if l.cache, err = lookup.NewCache(cfg, r.Fetch); err != nil {
		r.Close()
		return fmt.Errorf("lookup redis: %w", err)
	}
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		on, err := r.NotificationsOn(cctx)
		cancel()
		switch {
		case err != nil:
			l.logger.Warn("lookup redis: cannot tell whether keyspace notifications are on; route changes may take up to the ttl",
				zap.String("redis", l.where), zap.Error(err))
		case !on:
			l.logger.Warn("lookup redis: keyspace notifications are off (notify-keyspace-events needs K and g$x, or KA); route changes take up to the ttl",
				zap.String("redis", l.where))
		}
		r.Watch(ctx, l.cache, func(subscribed bool, err error) {
			if err != nil {
				l.logger.Warn("lookup redis: change notifications interrupted", zap.String("redis", l.where), zap.Error(err))
			} else {
				l.logger.Debug("lookup redis: subscribed to change notifications", zap.String("redis", l.where))
			}
		})
		r.Close()
	}()
	return nil
}

// resolve returns the answer for the connection in ctx (its placeholders,
// WithReplacer), or ok false on a miss.
func (l *Lookup) resolve(ctx context.Context) (key string, ans lookup.Answer, ok bool, err error) {
	key = replacerOf(ctx).ReplaceAll(l.Key, "")
	switch {
	case key == "":
		return key, ans, false, &NoRouteError{Key: key, Reason: "the key is empty"}
	case len(key) > lookup.MaxKeyLen:
		return key[:64] + "…", ans, false, &NoRouteError{Key: key[:64] + "…", Reason: fmt.Sprintf("the key is longer than %d bytes", lookup.MaxKeyLen)}
	}
	if l.file != nil {
		ans.Addrs, ok = l.file.Table().Lookup(key)
		l.count(ok, ans, lookup.Hit)
		return key, ans, ok, nil
	}
	ans, ok, res, err := l.cache.Get(ctx, key)
	if err != nil {
		l.counts[resultError].Add(1)
		l.logger.Warn("lookup failed", zap.String("lookup", l.name), zap.String("where", l.where),
			zap.String("key", key), zap.Error(err))
		// The client learns that the lookup failed, not the service's
		// address or its answer.
		return key, ans, false, &NoRouteError{Key: key, Reason: "the route lookup failed"}
	}
	l.count(ok, ans, res)
	return key, ans, ok, nil
}

func (l *Lookup) count(found bool, ans lookup.Answer, res lookup.Result) {
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

// connectionMembers is the members that depend on the connection: a
// lookup's answer, which replaces the farm's other members (only is true),
// or to addresses with placeholders, expanded, which join the static ones.
// Both nil: the static members only.
//
// rt is the lookup's key and whether the table held it, for drain_moved.
func (f *Farm) connectionMembers(ctx context.Context) (ms []*Member, only bool, rt route, err error) {
	if f.Lookup != nil {
		key, ans, ok, err := f.Lookup.resolve(ctx)
		if err != nil {
			return nil, false, rt, err
		}
		if ok && ans.Refuse != "" {
			return nil, false, rt, &RefusedError{Key: key, Reason: ans.Refuse}
		}
		rt = route{key: key, hit: ok, set: true}
		if ok {
			out := make([]*Member, 0, len(ans.Addrs))
			for _, a := range ans.Addrs {
				out = append(out, transientMember(a))
			}
			return out, true, rt, nil
		}
		if len(f.targets) == 0 && len(f.templates) == 0 {
			return nil, false, rt, &NoRouteError{Key: key}
		}
	}
	for _, tmpl := range f.templates {
		addr, err := expandAddress(ctx, tmpl)
		if err != nil {
			return nil, false, rt, err
		}
		ms = append(ms, transientMember(addr))
	}
	return ms, false, rt, nil
}

// transientMember is a member for an address a lookup returned: it shares
// the state (live connections, failure, health) that leases and farms hold
// for the address, but the farm keeps no reference to it, so a table of a
// million keys creates no lasting members. Its failure mark lasts only as
// long as some lease or farm holds the address.
func transientMember(addr string) *Member {
	st := new(memberState)
	v, _ := members.LoadOrStore(poolKey(addr), st)
	_, _ = members.Delete(poolKey(addr))
	return &Member{Addr: addr, state: v.(*memberState)}
}
