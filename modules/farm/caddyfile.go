package farm

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
//	farm <name> {             # a farm the lookup's answers may name
//		<farm options but lookup and farm>
//	}
//	max_dynamic_members <n>
//	dynamic_idle_timeout <duration>
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
		return true, cfutil.Int(d, &f.MaxConnections, 0)
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
	case "farm":
		return true, f.unmarshalNamed(d)
	case "max_dynamic_members":
		return true, cfutil.Int(d, &f.MaxDynamicMembers, 1)
	case "dynamic_idle_timeout":
		return true, cfutil.Duration(d, &f.DynamicIdleTimeout)
	default:
		return false, nil
	}
	return true, nil
}

// unmarshalLookup parses `lookup <source> <path or url> { … }` through the
// source module's own Caddyfile unmarshaler (layer4.lookups.<source>).
func (f *Farm) unmarshalLookup(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	source := d.Val()
	if _, err := caddy.GetModule("layer4.lookups." + source); err != nil {
		return d.Errf("lookup: unknown source %q (want file, http or redis)", source)
	}
	unm, err := caddyfile.UnmarshalModule(d, "layer4.lookups."+source)
	if err != nil {
		return err
	}
	f.LookupRaw = caddyconfig.JSONModuleObject(unm, "source", source, nil)
	return nil
}

// unmarshalNamed parses `farm <name> { <farm options> }`, a farm the
// lookup's answers may name.
func (f *Farm) unmarshalNamed(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	name := d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	if _, dup := f.Farms[name]; dup {
		return d.Errf("farm %s: defined twice", name)
	}
	g := new(Farm)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		if sub == "lookup" || sub == "farm" {
			return d.Errf("farm %s: a named farm has neither a lookup nor farms of its own", name)
		}
		ok, err := g.UnmarshalOption(d)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("farm %s: unknown option %q", name, sub)
		}
	}
	if f.Farms == nil {
		f.Farms = map[string]*Farm{}
	}
	f.Farms[name] = g
	return nil
}
