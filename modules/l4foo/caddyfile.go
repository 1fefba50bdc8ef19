package l4foo

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	foo {
//		to <address...>
//		<farm options: lb_policy, dial_timeout, ...>
//		stats <name>
//		max_line <bytes>
//		recovery <path>
//		idle_timeout <duration>|off
//		pool {
//			max_connections <n>
//			max_outstanding <n>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		ok, err := h.Farm.UnmarshalOption(d)
		if err != nil {
			return err
		}
		if ok {
			continue
		}
		opt := d.Val()
		if opt == "pool" {
			p, err := unmarshalPool(d)
			if err != nil {
				return err
			}
			h.Pool = p
			continue
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "stats":
			h.StatsName = d.Val()
		case "recovery":
			h.Recovery = d.Val()
		case "idle_timeout":
			if d.Val() == "off" {
				h.IdleTimeout = -1
				break
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil || dur <= 0 {
				return d.Errf("idle_timeout: %q is not a positive duration or off", d.Val())
			}
			h.IdleTimeout = caddy.Duration(dur)
		case "max_line":
			n, err := strconv.Atoi(d.Val())
			if err != nil || n <= 0 {
				return d.Errf("max_line: %q is not a positive number of bytes", d.Val())
			}
			h.MaxLine = n
		default:
			return d.Errf("unknown foo handler option %q", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// unmarshalPool reads pool { } (an empty block pools with the defaults).
func unmarshalPool(d *caddyfile.Dispenser) (*PoolOptions, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	p := &PoolOptions{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *int
		switch d.Val() {
		case "max_connections":
			dst = &p.MaxConnections
		case "max_outstanding":
			dst = &p.MaxOutstanding
		default:
			return nil, d.Errf("pool: unknown option %q", d.Val())
		}
		if err := cfutil.Int(d, dst, 1); err != nil {
			return nil, err
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return p, nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
