package farm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/lookup"
	"github.com/caddyprelude/prelude/modules/internal/cfutil"
)

func init() {
	caddy.RegisterModule(FileLookup{})
	caddy.RegisterModule(HTTPLookup{})
	caddy.RegisterModule(RedisLookup{})
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

// FileLookup is layer4.lookups.file: a TSV file of
// `key<TAB>address[,address…]` lines, read at load (a table that cannot be
// read fails the load) and again within Refresh of being replaced; a bad
// file keeps the last good table (lookup.File).
type FileLookup struct {
	LookupOptions
	// The table's path.
	Path string `json:"path"`
	// How often the file is checked for changes. Default 250ms.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	file *lookup.File
}

// CaddyModule returns the Caddy module information.
func (FileLookup) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "layer4.lookups.file", New: func() caddy.Module { return new(FileLookup) }}
}

// Provision reads the table and watches it for the config's lifetime.
func (l *FileLookup) Provision(ctx caddy.Context) error {
	switch {
	case l.Path == "":
		return errors.New("lookup file: a path is required")
	case l.Refresh < 0:
		return errors.New("lookup file: refresh must not be negative")
	case l.Refresh == 0:
		l.Refresh = caddy.Duration(DefaultLookupRefresh)
	}
	f, err := lookup.OpenFile(l.Path)
	if err != nil {
		return fmt.Errorf("lookup file: %w", err)
	}
	logger := ctx.Logger()
	f.Loaded = func(t *lookup.Table, took time.Duration, err error) {
		if err != nil {
			logger.Error("lookup file not reloaded: keeping the last good table", zap.String("path", l.Path), zap.Error(err))
			return
		}
		logger.Info("lookup file reloaded", zap.String("path", l.Path), zap.Int("keys", t.Len()), zap.Duration("took", took),
			zap.String("built", t.BuiltBy))
	}
	l.file = f
	go f.Watch(ctx, time.Duration(l.Refresh))
	return nil
}

// Resolve looks key up in the current table.
func (l *FileLookup) Resolve(_ context.Context, key string) (lookup.Answer, bool, lookup.Result, error) {
	value, ok := l.file.Lookup(key)
	return lookup.TableAnswer(value), ok, lookup.Hit, nil
}

// Status reports the table's size and the last reload error.
func (l *FileLookup) Status() SourceStatus {
	st := SourceStatus{Where: l.Path, Size: l.file.Table().Len()}
	if err := l.file.Err(); err != nil {
		st.Error = err.Error()
	}
	return st
}

// UnmarshalCaddyfile parses `file <path> { key …; name …; refresh …; drain_moved }`.
func (l *FileLookup) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalLookup(d, &l.LookupOptions, &l.Path, func(d *caddyfile.Dispenser) (bool, error) {
		if d.Val() == "refresh" {
			return true, cfutil.Duration(d, &l.Refresh)
		}
		return false, nil
	})
}

// CacheOptions are how an http or redis lookup keeps the service's
// answers (lookup.Cache): how long an answer is used (default 30s), how
// long "no such key" is (default 5s), how long an expired answer is
// still served while the service fails (default 1m; -1 never), how long
// one request may take (default 1s), and the most keys kept (default
// 100000).
type CacheOptions struct {
	TTL         caddy.Duration `json:"ttl,omitempty"`
	NegativeTTL caddy.Duration `json:"negative_ttl,omitempty"`
	Stale       caddy.Duration `json:"stale,omitempty"`
	Timeout     caddy.Duration `json:"timeout,omitempty"`
	MaxEntries  int            `json:"max_entries,omitempty"`
}

func (o CacheOptions) config() (lookup.CacheConfig, error) {
	if o.TTL < 0 || o.NegativeTTL < 0 || o.Timeout < 0 || o.MaxEntries < 0 || o.Stale < -1 {
		return lookup.CacheConfig{}, errors.New("durations and max_entries must not be negative (stale -1 turns it off)")
	}
	cfg := lookup.CacheConfig{
		TTL:         orDefault(o.TTL, DefaultLookupTTL),
		NegativeTTL: orDefault(o.NegativeTTL, DefaultLookupNegativeTTL),
		Stale:       orDefault(o.Stale, DefaultLookupStale),
		Timeout:     orDefault(o.Timeout, DefaultLookupTimeout),
		MaxEntries:  o.MaxEntries,
	}
	if o.Stale < 0 {
		cfg.Stale = 0
	}
	if cfg.MaxEntries == 0 {
		cfg.MaxEntries = DefaultLookupMaxEntries
	}
	return cfg, nil
}

func orDefault(d caddy.Duration, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return time.Duration(d)
}

// unmarshalOption parses one cache option, if the token is one.
func (o *CacheOptions) unmarshalOption(d *caddyfile.Dispenser) (bool, error) {
	switch d.Val() {
	case "ttl":
		return true, cfutil.Duration(d, &o.TTL)
	case "negative_ttl":
		return true, cfutil.Duration(d, &o.NegativeTTL)
	case "timeout":
		return true, cfutil.Duration(d, &o.Timeout)
	case "stale":
		var v string
		if err := cfutil.OneArg(d, &v); err != nil {
			return true, err
		}
		if v == "off" {
			o.Stale = -1
			return true, nil
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return true, d.Errf("stale: %v", err)
		}
		o.Stale = caddy.Duration(dur)
		return true, nil
	case "max_entries":
		return true, cfutil.Int(d, &o.MaxEntries, 1)
	}
	return false, nil
}

// HTTPLookup is layer4.lookups.http: GET URL with {key} replaced by the
// key (lookup.HTTP), answers kept in a lookup.Cache.
type HTTPLookup struct {
	LookupOptions
	// The URL template, holding {key}.
	URL string `json:"url"`
	CacheOptions

	shared  *sharedCache
	poolKey string
}

// CaddyModule returns the Caddy module information.
func (HTTPLookup) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "layer4.lookups.http", New: func() caddy.Module { return new(HTTPLookup) }}
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

// Provision checks the URL and takes the cache (a service that is down
// does not stop the load). A config reload that keeps the lookup as it
// was keeps its cache, warm (sharedCaches).
func (l *HTTPLookup) Provision(caddy.Context) error {
	h, err := lookup.NewHTTP(l.URL, &http.Client{Transport: lookupTransport,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }})
	if err != nil {
		return err
	}
	cfg, err := l.config()
	if err != nil {
		return fmt.Errorf("lookup http: %w", err)
	}
	l.poolKey = fmt.Sprintf("http\x00%s\x00%+v", l.URL, cfg)
	v, _, err := sharedCaches.LoadOrNew(l.poolKey, func() (caddy.Destructor, error) {
		c, err := lookup.NewCache(cfg, h.Fetch)
		return &sharedCache{cache: c, where: h.String(), stop: func() {}}, err
	})
	if err != nil {
		return fmt.Errorf("lookup http: %w", err)
	}
	l.shared = v.(*sharedCache)
	return nil
}

// Cleanup lets go of the cache; the last config to hold it drops it.
func (l *HTTPLookup) Cleanup() error {
	_, err := sharedCaches.Delete(l.poolKey)
	return err
}

// Resolve answers key from the cache or the service.
func (l *HTTPLookup) Resolve(ctx context.Context, key string) (lookup.Answer, bool, lookup.Result, error) {
	return l.shared.cache.Get(ctx, key)
}

// Status reports the URL without its password and the cache.
func (l *HTTPLookup) Status() SourceStatus { return l.shared.status() }

// UnmarshalCaddyfile parses `http <url> { key …; name …; ttl …; … }`.
func (l *HTTPLookup) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalLookup(d, &l.LookupOptions, &l.URL, l.unmarshalOption)
}

// RedisLookup is layer4.lookups.redis: the string Prefix+key, or the
// field key of the hash Hash (lookup.Redis), answers kept in a
// lookup.Cache and dropped from it by Redis keyspace notifications.
type RedisLookup struct {
	LookupOptions
	// redis://[user:password@]host:port[/db], or rediss:// for TLS.
	URL string `json:"url"`
	// The key read is Prefix+key (default "prelude:route:"), unless Hash
	// is set: then the field key of the hash Hash.
	Prefix string `json:"prefix,omitempty"`
	Hash   string `json:"hash,omitempty"`
	CacheOptions

	shared  *sharedCache
	poolKey string
}

// CaddyModule returns the Caddy module information.
func (RedisLookup) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "layer4.lookups.redis", New: func() caddy.Module { return new(RedisLookup) }}
}

// Provision connects (lazily: a server that is down does not stop the
// load) and subscribes to change notifications until the last config
// using this lookup as it is ends: a config reload that keeps the lookup
// keeps its cache, warm, and its subscription (sharedCaches).
func (l *RedisLookup) Provision(caddy.Context) error {
	if l.Prefix == "" && l.Hash == "" {
		l.Prefix = DefaultRedisPrefix
	}
	cfg, err := l.config()
	if err != nil {
		return fmt.Errorf("lookup redis: %w", err)
	}
	l.poolKey = fmt.Sprintf("redis\x00%s\x00%s\x00%s\x00%+v", l.URL, l.Prefix, l.Hash, cfg)
	v, _, err := sharedCaches.LoadOrNew(l.poolKey, func() (caddy.Destructor, error) {
		r, err := lookup.NewRedis(l.URL, l.Prefix, l.Hash)
		if err != nil {
			return nil, err
		}
		c, err := lookup.NewCache(cfg, r.Fetch)
		if err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("lookup redis: %w", err)
		}
		wctx, stop := context.WithCancel(context.Background())
		sc := &sharedCache{cache: c, where: r.String(), stop: stop}
		go sc.watchRedis(wctx, r)
		return sc, nil
	})
	if err != nil {
		return err
	}
	l.shared = v.(*sharedCache)
	return nil
}

// Cleanup lets go of the cache; the last config to hold it drops it and
// its subscription.
func (l *RedisLookup) Cleanup() error {
	_, err := sharedCaches.Delete(l.poolKey)
	return err
}

// watchRedis checks that the server publishes keyspace notifications, then
// follows them until no config holds the cache (Destruct).
func (c *sharedCache) watchRedis(ctx context.Context, r *lookup.Redis) {
	defer r.Close()
	// The logger of the config running now: this outlives the config
	// that made it.
	logger := func() *zap.Logger { return caddy.Log().Named("layer4.lookups.redis") }
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	on, err := r.NotificationsOn(cctx)
	cancel()
	switch {
	case ctx.Err() != nil:
		return
	case err != nil:
		logger().Warn("lookup redis: cannot tell whether keyspace notifications are on; route changes may take up to the ttl",
			zap.String("redis", c.where), zap.Error(err))
	case !on:
		logger().Warn("lookup redis: keyspace notifications are off (notify-keyspace-events needs K and g$x, or KA); route changes take up to the ttl",
			zap.String("redis", c.where))
	}
	r.Watch(ctx, c.cache, func(subscribed bool, err error) {
		if err != nil {
			logger().Warn("lookup redis: change notifications interrupted", zap.String("redis", c.where), zap.Error(err))
		} else {
			logger().Debug("lookup redis: subscribed to change notifications", zap.String("redis", c.where))
		}
	})
}

// Resolve answers key from the cache or Redis.
func (l *RedisLookup) Resolve(ctx context.Context, key string) (lookup.Answer, bool, lookup.Result, error) {
	return l.shared.cache.Get(ctx, key)
}

// Status reports the server without its password and the cache.
func (l *RedisLookup) Status() SourceStatus { return l.shared.status() }

// sharedCaches holds the caches of http and redis lookups by their
// configuration (source, URL, options), across config reloads, as Caddy's
// reverse proxy keeps its upstreams' state: a reload that keeps a lookup
// as it was does not send every key to the service again.
var sharedCaches = caddy.NewUsagePool()

// sharedCache is one lookup's cache, and what stops its Redis
// subscription.
type sharedCache struct {
	cache *lookup.Cache
	where string
	stop  context.CancelFunc
}

// Destruct stops the subscription, if any, once no config holds the cache.
func (c *sharedCache) Destruct() error {
	c.stop()
	return nil
}

func (c *sharedCache) status() SourceStatus {
	cs := c.cache.Stats()
	return SourceStatus{Where: c.where, Size: cs.Entries, Cache: &cs}
}

// UnmarshalCaddyfile parses `redis <url> { key …; prefix …; hash …; ttl …; … }`.
func (l *RedisLookup) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return unmarshalLookup(d, &l.LookupOptions, &l.URL, func(d *caddyfile.Dispenser) (bool, error) {
		switch d.Val() {
		case "prefix":
			return true, cfutil.OneArg(d, &l.Prefix)
		case "hash":
			return true, cfutil.OneArg(d, &l.Hash)
		}
		return l.unmarshalOption(d)
	})
}

// unmarshalLookup parses `<source> <where> { … }`: the options every
// source has (key, name, drain_moved) and, through more, the source's own.
func unmarshalLookup(d *caddyfile.Dispenser, o *LookupOptions, where *string, more func(*caddyfile.Dispenser) (bool, error)) error {
	d.Next() // the source's name
	source := d.Val()
	if err := cfutil.OneArg(d, where); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch sub := d.Val(); sub {
		case "key":
			if err := cfutil.OneArg(d, &o.Key); err != nil {
				return err
			}
		case "name":
			if err := cfutil.OneArg(d, &o.Name); err != nil {
				return err
			}
		case "drain_moved":
			if d.NextArg() {
				return d.ArgErr()
			}
			o.DrainMoved = true
		default:
			ok, err := more(d)
			if err != nil {
				return err
			}
			if !ok {
				return d.Errf("lookup %s: unknown option %q", source, sub)
			}
		}
	}
	return nil
}

// Interface guards
var (
	_ LookupSource          = (*FileLookup)(nil)
	_ LookupSource          = (*HTTPLookup)(nil)
	_ LookupSource          = (*RedisLookup)(nil)
	_ caddy.Provisioner     = (*FileLookup)(nil)
	_ caddy.CleanerUpper    = (*HTTPLookup)(nil)
	_ caddy.CleanerUpper    = (*RedisLookup)(nil)
	_ caddyfile.Unmarshaler = (*FileLookup)(nil)
	_ caddyfile.Unmarshaler = (*HTTPLookup)(nil)
	_ caddyfile.Unmarshaler = (*RedisLookup)(nil)
)
