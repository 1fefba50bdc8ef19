// Package l4foo holds the Caddy glue for the Foo line protocol: the
// layer4.matchers.foo matcher, the layer4.handlers.foo analysing proxy, its
// named stats sets with crash-safe recovery, metrics and SIGUSR2 dump. The
// protocol code lives in package foo.
package l4foo

import (
	"errors"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddyprelude/prelude/foo"
)

func init() {
	caddy.RegisterModule(&MatchFoo{})
}

// MatchFoo matches connections whose first line starts "REQ <digits>". It
// decides on at most the first 25 bytes.
type MatchFoo struct{}

// CaddyModule returns the Caddy module information.
func (*MatchFoo) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.matchers.foo",
		New: func() caddy.Module { return new(MatchFoo) },
	}
}

// Match implements layer4.ConnMatcher.
func (m *MatchFoo) Match(cx *layer4.Connection) (bool, error) {
	ok, seq, err := foo.MatchFirstLine(cx.MatchingBytes())
	if errors.Is(err, foo.ErrNeedMore) {
		return false, layer4.ErrConsumedAllPrefetchedBytes
	}
	if ok {
		if repl, isRepl := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); isRepl {
			repl.Set("l4.foo.seq", strconv.FormatUint(seq, 10))
		}
	}
	return ok, nil
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens. Syntax:
//
//	foo
func (m *MatchFoo) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Err("the foo matcher takes no options")
	}
	return nil
}

// Interface guards
var (
	_ layer4.ConnMatcher    = (*MatchFoo)(nil)
	_ caddyfile.Unmarshaler = (*MatchFoo)(nil)
)
