// Package l4amqp holds the Caddy glue for AMQP: the layer4.matchers.amqp
// matcher and the layer4.handlers.amqp vhost-routing handler. The wire code
// lives in package amqp.
package l4amqp

import (
	"errors"
	"fmt"
	"io"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddyprelude/prelude/amqp"
)

func init() {
	caddy.RegisterModule(&MatchAMQP{})
}

// MatchAMQP matches connections that open with an AMQP protocol header. It
// reads at most 8 bytes.
type MatchAMQP struct {
	// "0-9-1" (the default) matches the AMQP 0-9-1 header; "1.0" matches the
	// AMQP 1.0 headers (plain, TLS and SASL).
	Version string `json:"version,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*MatchAMQP) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.matchers.amqp",
		New: func() caddy.Module { return new(MatchAMQP) },
	}
}

// Validate checks the version.
func (m *MatchAMQP) Validate() error {
	switch m.Version {
	case "", "0-9-1", "1.0":
		return nil
	}
	return fmt.Errorf("version: %q is not 0-9-1 or 1.0", m.Version)
}

// Match reports whether the connection opens with the configured header.
func (m *MatchAMQP) Match(cx *layer4.Connection) (bool, error) {
	buf := make([]byte, amqp.HeaderLen)
	n, err := io.ReadAtLeast(cx, buf, 1)
	if err != nil {
		return false, err
	}
	for n < len(buf) {
		_, perr := amqp.ParseHeader(buf[:n])
		if !errors.Is(perr, amqp.ErrNeedMore) {
			return false, nil
		}
		k, err := cx.Read(buf[n:])
		n += k
		if err != nil {
			return false, err // ErrConsumedAllPrefetchedBytes: ask for more
		}
	}
	v, err := amqp.ParseHeader(buf)
	if err != nil {
		return false, nil
	}
	if m.Version == "1.0" {
		return v.Is10(), nil
	}
	return v == amqp.Version091, nil
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens. Syntax:
//
//	amqp [version 0-9-1|1.0]
//	amqp {
//		version 0-9-1|1.0
//	}
func (m *MatchAMQP) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // matcher name
	parse := func() error {
		if d.Val() != "version" {
			return d.Errf("unknown amqp matcher option %q", d.Val())
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		m.Version = d.Val()
		return m.Validate()
	}
	if d.NextArg() {
		if err := parse(); err != nil {
			return err
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := parse(); err != nil {
			return err
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var (
	_ layer4.ConnMatcher    = (*MatchAMQP)(nil)
	_ caddy.Validator       = (*MatchAMQP)(nil)
	_ caddyfile.Unmarshaler = (*MatchAMQP)(nil)
)
