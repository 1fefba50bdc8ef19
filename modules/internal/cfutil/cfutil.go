// Package cfutil holds the Caddyfile argument helpers every module uses.
package cfutil

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// OneArg reads exactly one argument of the option at the dispenser's
// current token into dst.
func OneArg(d *caddyfile.Dispenser, dst *string) error {
	opt := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s: takes one argument, got more", opt)
	}
	return nil
}

// Duration reads the option's one argument as a Caddy duration into dst.
func Duration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	opt := d.Val()
	var s string
	if err := OneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %v", opt, err)
	}
	*dst = caddy.Duration(v)
	return nil
}

// Int reads the option's one argument as an integer of at least min (0
// or 1) into dst.
func Int(d *caddyfile.Dispenser, dst *int, min int) error {
	opt := d.Val()
	var s string
	if err := OneArg(d, &s); err != nil {
		return err
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < min {
		kind := "a non-negative"
		if min > 0 {
			kind = "a positive"
		}
		return d.Errf("%s: %q is not %s integer", opt, s, kind)
	}
	*dst = v
	return nil
}
