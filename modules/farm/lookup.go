package farm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/lookup"
)

// Lookup routes each connection by a key looked up in a routing table
// instead of a fixed list of addresses: a hit is the farm's members for
// that connection, a miss falls through to To (the default) or, without
// To, is refused with a NoRouteError naming the key.
//
// Sources: "file", a TSV file of `key<TAB>address[,address…]` lines read
// again within Refresh of being replaced (lookup.File).
type Lookup struct {
	// Where the table comes from: "file".
	Source string `json:"source"`
	// The table's path, for "file".
	Path string `json:"path,omitempty"`
	// The key, with placeholders: "{l4.git.owner}", say.
	Key string `json:"key"`
	// How often the file is checked for changes. Default 250ms.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	file *lookup.File
}

// DefaultLookupRefresh is how often a lookup file is checked for changes.
const DefaultLookupRefresh = 250 * time.Millisecond

// NoRouteError is a connection whose key the lookup does not hold, with
// no default to fall through to, or whose key is unusable.
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

func (l *Lookup) validate() error {
	switch {
	case l.Source != "file":
		return fmt.Errorf("lookup: unknown source %q (want file)", l.Source)
	case l.Path == "":
		return errors.New("lookup file: a path is required")
	case l.Key == "":
		return errors.New("lookup: a key is required, e.g. key {l4.git.owner}")
	case l.Refresh < 0:
		return errors.New("lookup: refresh must not be negative")
	}
	return nil
}

// provision reads the table (a config with a table that cannot be read
// does not load) and watches it for the config's lifetime.
func (l *Lookup) provision(ctx context.Context, logger *zap.Logger) error {
	if l.Refresh == 0 {
		l.Refresh = caddy.Duration(DefaultLookupRefresh)
	}
	f, err := lookup.OpenFile(l.Path)
	if err != nil {
		return fmt.Errorf("lookup file: %w", err)
	}
	f.Loaded = func(t *lookup.Table, err error) {
		if err != nil {
			logger.Error("lookup file not reloaded: keeping the last good table", zap.String("path", l.Path), zap.Error(err))
			return
		}
		logger.Info("lookup file reloaded", zap.String("path", l.Path), zap.Int("keys", t.Len()))
	}
	l.file = f
	go f.Watch(ctx, time.Duration(l.Refresh))
	return nil
}

// resolve returns the addresses for the connection in ctx (its
// placeholders, WithReplacer), or ok false on a miss.
func (l *Lookup) resolve(ctx context.Context) (key string, addrs []string, ok bool, err error) {
	key = replacerOf(ctx).ReplaceAll(l.Key, "")
	switch {
	case key == "":
		return key, nil, false, &NoRouteError{Key: key, Reason: "the key is empty"}
	case len(key) > lookup.MaxKeyLen:
		return key[:64] + "…", nil, false, &NoRouteError{Key: key[:64] + "…", Reason: fmt.Sprintf("the key is longer than %d bytes", lookup.MaxKeyLen)}
	}
	addrs, ok = l.file.Table().Lookup(key)
	return key, addrs, ok, nil
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
func (f *Farm) connectionMembers(ctx context.Context) (ms []*Member, only bool, err error) {
	if f.Lookup != nil {
		key, addrs, ok, err := f.Lookup.resolve(ctx)
		if err != nil {
			return nil, false, err
		}
		if ok {
			out := make([]*Member, 0, len(addrs))
			for _, a := range addrs {
				out = append(out, transientMember(a))
			}
			return out, true, nil
		}
		if len(f.targets) == 0 && len(f.templates) == 0 {
			return nil, false, &NoRouteError{Key: key}
		}
	}
	for _, tmpl := range f.templates {
		addr, err := expandAddress(ctx, tmpl)
		if err != nil {
			return nil, false, err
		}
		ms = append(ms, transientMember(addr))
	}
	return ms, false, nil
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
