package farm

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
	"github.com/caddyprelude/prelude/modules/internal/tlsclient"
)

// UnmarshalOption parses the farm option at the dispenser's current token,
// if it is one, and reports whether it was. Handlers call it for each
// subdirective of a block that describes a farm. Syntax:
//
//	to <address...>
//	lb_policy round_robin|least_conn|random|first|ip_hash
//	lb_try_duration <duration>
//	lb_try_interval <duration>
//	dial_timeout <duration>
//	dns_refresh <duration>
//	resolver <host:port>
//	fail_duration <duration>
//	max_connections <n>
//	drain_removed
//	health_interval <duration>
//	health_timeout <duration>
//	proxy_protocol v1|v2
//	prefer_zone <zone>
//	upstream <address> {
//		tls { … }
//		zone <zone>
//	}
//	lookup file <path> {
//		key <placeholders>
//		name <name>
//		drain_moved
//		refresh <duration>
//	}
//	lookup http|redis <url> {
//		key <placeholders>
//		name <name>
//		drain_moved
//		ttl|negative_ttl|timeout <duration>
//		stale <duration>|off
//		max_entries <n>
//		prefix <string>   # redis
//		hash <key>        # redis
//	}
func (f *Farm) UnmarshalOption(d *caddyfile.Dispenser) (bool, error) {
	opt := d.Val()
	switch opt {
	case "to":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		f.To = append(f.To, args...)
	case "lb_policy":
		return true, cfutil.OneArg(d, &f.LBPolicy)
	case "resolver":
		return true, cfutil.OneArg(d, &f.Resolver)
	case "lb_try_duration":
		return true, cfutil.Duration(d, &f.LBTryDuration)
	case "lb_try_interval":
		return true, cfutil.Duration(d, &f.LBTryInterval)
	case "dial_timeout":
		return true, cfutil.Duration(d, &f.DialTimeout)
	case "dns_refresh":
		return true, cfutil.Duration(d, &f.DNSRefresh)
	case "fail_duration":
		return true, cfutil.Duration(d, &f.FailDuration)
	case "max_connections":
		var s string
		if err := cfutil.OneArg(d, &s); err != nil {
			return true, err
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return true, d.Errf("max_connections: %q is not a non-negative integer", s)
		}
		f.MaxConnections = n
	case "drain_removed":
		if d.NextArg() {
			return true, d.ArgErr()
		}
		f.DrainRemoved = true
	case "health_interval":
		return true, cfutil.Duration(d, &f.HealthInterval)
	case "health_timeout":
		return true, cfutil.Duration(d, &f.HealthTimeout)
	case "proxy_protocol":
		return true, cfutil.OneArg(d, &f.ProxyProtocol)
	case "prefer_zone":
		return true, cfutil.OneArg(d, &f.PreferZone)
	case "upstream":
		u := Upstream{}
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		u.Address = d.Val()
		if d.NextArg() {
			return true, d.ArgErr()
		}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			switch sub := d.Val(); sub {
			case "tls":
				c, err := tlsclient.Unmarshal(d)
				if err != nil {
					return true, err
				}
				u.TLS = c
			case "zone":
				if err := cfutil.OneArg(d, &u.Zone); err != nil {
					return true, err
				}
			default:
				return true, d.Errf("upstream: unknown option %q", sub)
			}
		}
		f.Upstreams = append(f.Upstreams, u)
	case "lookup":
		return true, f.unmarshalLookup(d)
	default:
		return false, nil
	}
	return true, nil
}

// unmarshalLookup parses
//
//	lookup file <path> { key …; refresh … }
//	lookup http <url> { key …; ttl …; negative_ttl …; stale …|off; timeout …; max_entries … }
//	lookup redis <url> { key …; prefix …; hash …; (the http cache options) }
func (f *Farm) unmarshalLookup(d *caddyfile.Dispenser) error {
	l := &Lookup{}
	if !d.NextArg() {
		return d.ArgErr()
	}
	l.Source = d.Val()
	where := &l.URL
	switch l.Source {
	case "file":
		where = &l.Path
	case "http", "redis":
	default:
		return d.Errf("lookup: unknown source %q (want file, http or redis)", l.Source)
	}
	if err := cfutil.OneArg(d, where); err != nil {
		return err
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := l.unmarshalOption(d); err != nil {
			return err
		}
	}
	f.Lookup = l
	return nil
}

func (l *Lookup) unmarshalOption(d *caddyfile.Dispenser) error {
	sub := d.Val()
	cached := l.Source != "file"
	switch {
	case sub == "key":
		return cfutil.OneArg(d, &l.Key)
	case sub == "name":
		return cfutil.OneArg(d, &l.Name)
	case sub == "drain_moved":
		if d.NextArg() {
			return d.ArgErr()
		}
		l.DrainMoved = true
		return nil
	case sub == "refresh" && l.Source == "file":
		return cfutil.Duration(d, &l.Refresh)
	case sub == "prefix" && l.Source == "redis":
		return cfutil.OneArg(d, &l.Prefix)
	case sub == "hash" && l.Source == "redis":
		return cfutil.OneArg(d, &l.Hash)
	case sub == "ttl" && cached:
		return cfutil.Duration(d, &l.TTL)
	case sub == "negative_ttl" && cached:
		return cfutil.Duration(d, &l.NegativeTTL)
	case sub == "timeout" && cached:
		return cfutil.Duration(d, &l.Timeout)
	case sub == "stale" && cached:
		var v string
		if err := cfutil.OneArg(d, &v); err != nil {
			return err
		}
		if v == "off" {
			l.Stale = -1
			return nil
		}
		dur, err := caddy.ParseDuration(v)
		if err != nil {
			return d.Errf("stale: %v", err)
		}
		l.Stale = caddy.Duration(dur)
		return nil
	case sub == "max_entries" && cached:
		var n string
		if err := cfutil.OneArg(d, &n); err != nil {
			return err
		}
		v, err := strconv.Atoi(n)
		if err != nil || v < 1 {
			return d.Errf("lookup: max_entries %q is not a positive number", n)
		}
		l.MaxEntries = v
		return nil
	}
	return d.Errf("lookup %s: unknown option %q", l.Source, sub)
}
