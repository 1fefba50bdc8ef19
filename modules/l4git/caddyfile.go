package l4git

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	git {
//		to <address...>
//		<farm options: lb_policy, dial_timeout, fail_duration, ...>
//		rewrite <template>
//		error <message>
//		request_timeout <duration>
//		first_byte_timeout <duration>
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
		switch opt := d.Val(); opt {
		case "rewrite", "error":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if opt == "rewrite" {
				h.Rewrite = d.Val()
			} else {
				h.Error = d.Val()
			}
		case "request_timeout":
			if err := cfutil.Duration(d, &h.RequestTimeout); err != nil {
				return err
			}
		case "first_byte_timeout":
			if err := cfutil.Duration(d, &h.FirstByteTimeout); err != nil {
				return err
			}
		default:
			return d.Errf("unknown git handler option %q", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
