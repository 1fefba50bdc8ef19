package l4foo

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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

var _ caddyfile.Unmarshaler = (*Handler)(nil)
