// Package l4zmtp holds the Caddy glue for ZMTP 3.x: layer4.matchers.zmtp and
// layer4.handlers.zmtp. The wire code lives in package zmtp.
package l4zmtp

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddyprelude/prelude/zmtp"
)

func init() {
	caddy.RegisterModule(&MatchZMTP{})
}

// MatchZMTP matches the 10-byte ZMTP signature (0xFF, 8 padding bytes that
// are never validated, 0x7F). It never writes: a libzmq client sends only
// its signature and waits, so the version and mechanism can only be learnt
// by the handler.
type MatchZMTP struct{}

// CaddyModule returns the Caddy module information.
func (*MatchZMTP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.matchers.zmtp",
		New: func() caddy.Module { return new(MatchZMTP) },
	}
}

// Match implements layer4.ConnMatcher.
func (m *MatchZMTP) Match(cx *layer4.Connection) (bool, error) {
	b := cx.MatchingBytes()
	err := zmtp.CheckSignature(b[:min(len(b), zmtp.SignatureLen)])
	if errors.Is(err, zmtp.ErrNeedMore) {
		return false, layer4.ErrConsumedAllPrefetchedBytes
	}
	return err == nil, nil
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens. Syntax:
//
//	zmtp
func (m *MatchZMTP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Err("the zmtp matcher takes no options")
	}
	return nil
}

// Interface guards
var (
	_ layer4.ConnMatcher    = (*MatchZMTP)(nil)
	_ caddyfile.Unmarshaler = (*MatchZMTP)(nil)
)
