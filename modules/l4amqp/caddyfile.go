package l4amqp

import (
	"math"
	"strconv"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"

	"github.com/caddyprelude/prelude/modules/farm"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	amqp {
//		vhost <pattern...> {
//			to <address...>
//			lb_policy round_robin|least_conn|random|first|ip_hash
//			lb_try_duration <duration>
//			lb_try_interval <duration>
//			dial_timeout <duration>
//			dns_refresh <duration>
//			resolver <host:port>
//			fail_duration <duration>
//			max_connections <n>
//			limits {
//				max_connections <n>
//				connection_rate <n>/<interval>
//				data_rate <size>/s
//			}
//			pool {
//				max_channels_per_connection <n>
//				idle_timeout <duration>
//				min_idle <n>
//				max_connections <n>
//				max_message_size <size>
//				max_client_backlog <size>
//				reuse_channels
//			}
//		}
//		default {
//			<the same farm options, without limits>
//		}
//		limits {
//			<the same limits: the default for every vhost block>
//		}
//		pause_timeout <duration>
//		stats on|off
//		relay loop|goroutines
//		stats_objects <max names>
//		capture {
//			file <path>
//			format ndjson|pcapng
//			body none|full|<bytes>
//			vhost|user|connection_name|exchange|routing_key|queue <glob>
//			client <ip or cidr>
//			max_bytes <size>
//			max_sessions <n>
//			duration <duration>
//		}
//		name <name>
//		handshake_timeout <duration>
//		channel_max <n>
//		frame_max <n>
//		heartbeat <seconds>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "vhost":
			patterns := d.RemainingArgs()
			if len(patterns) == 0 {
				return d.Errf("vhost: at least one vhost name or pattern is required")
			}
			r := &Route{VHosts: patterns}
			if err := unmarshalFarm(d, &r.Farm, &r.Limits, &r.Pool); err != nil {
				return err
			}
			h.Routes = append(h.Routes, r)
		case "default":
			if d.NextArg() {
				return d.ArgErr()
			}
			if h.Default != nil {
				return d.Err("default: given twice")
			}
			h.Default = new(farm.Farm)
			if err := unmarshalFarm(d, h.Default, nil, nil); err != nil {
				return err
			}
		case "limits":
			l, err := unmarshalLimits(d)
			if err != nil {
				return err
			}
			h.Limits = l
		case "pause_timeout":
			if err := cfutil.Duration(d, &h.PauseTimeout); err != nil {
				return err
			}
		case "stats":
			if err := cfutil.OneArg(d, &h.Stats); err != nil {
				return err
			}
		case "relay":
			if err := cfutil.OneArg(d, &h.Relay); err != nil {
				return err
			}
		case "stats_objects":
			n, err := uintArg(d, 31)
			if err != nil {
				return err
			}
			h.StatsObjects = int(n)
		case "capture":
			c, err := unmarshalCapture(d)
			if err != nil {
				return err
			}
			h.Captures = append(h.Captures, c)
		case "name":
			if err := cfutil.OneArg(d, &h.Name); err != nil {
				return err
			}
		case "handshake_timeout":
			if err := cfutil.Duration(d, &h.HandshakeTimeout); err != nil {
				return err
			}
		case "channel_max", "heartbeat":
			n, err := uintArg(d, 16)
			if err != nil {
				return err
			}
			if opt == "channel_max" {
				h.ChannelMax = uint16(n)
			} else {
				hb := uint16(n)
				h.Heartbeat = &hb
			}
		case "frame_max":
			n, err := uintArg(d, 32)
			if err != nil {
				return err
			}
			h.FrameMax = uint32(n)
		default:
			return d.Errf("unknown amqp handler option %q", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

func unmarshalFarm(d *caddyfile.Dispenser, f *farm.Farm, limits **Limits, pool **PoolOptions) error {
	owner := d.Val()
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() == "pool" && pool != nil {
			p, err := unmarshalPool(d)
			if err != nil {
				return err
			}
			*pool = p
			continue
		}
		if d.Val() == "limits" && limits != nil {
			l, err := unmarshalLimits(d)
			if err != nil {
				return err
			}
			*limits = l
			continue
		}
		ok, err := f.UnmarshalOption(d)
		if err != nil {
			return err
		}
		if !ok {
			return d.Errf("%s: unknown farm option %q", owner, d.Val())
		}
	}
	if len(f.To) == 0 && len(f.Upstreams) == 0 && !f.HasLookup() {
		return d.Errf("%s: a 'to' with at least one upstream address (or a lookup) is required", owner)
	}
	return nil
}

func uintArg(d *caddyfile.Dispenser, bits int) (uint64, error) {
	opt := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.ParseUint(d.Val(), 10, bits)
	if err != nil {
		return 0, d.Errf("%s: %q is not an integer of at most %d bits", opt, d.Val(), bits)
	}
	return n, nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)

func unmarshalCapture(d *caddyfile.Dispenser) (Capture, error) {
	var c Capture
	if d.NextArg() {
		return c, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		var err error
		switch opt {
		case "file", "format", "vhost", "user", "client", "connection_name", "exchange", "routing_key", "queue":
			dst := map[string]*string{"file": &c.File, "format": &c.Format, "vhost": &c.Filter.VHost,
				"user": &c.Filter.User, "client": &c.Filter.Client, "connection_name": &c.Filter.ConnectionName,
				"exchange": &c.Filter.Exchange, "routing_key": &c.Filter.RoutingKey, "queue": &c.Filter.Queue}[opt]
			err = cfutil.OneArg(d, dst)
		case "body":
			var s string
			if err = cfutil.OneArg(d, &s); err == nil {
				var b BodyPolicy
				if b, err = ParseBodyPolicy(s); err != nil {
					err = d.Errf("capture: %v", err)
				}
				c.Body = &b
			}
		case "max_bytes":
			var s string
			if err = cfutil.OneArg(d, &s); err == nil {
				n, perr := humanize.ParseBytes(s)
				if perr != nil || n > math.MaxInt64 {
					err = d.Errf("capture: max_bytes: %q is not a size", s)
				}
				c.MaxBytes = int64(n)
			}
		case "max_sessions":
			var n uint64
			if n, err = uintArg(d, 31); err == nil {
				c.MaxSessions = int64(n)
			}
		case "duration":
			err = cfutil.Duration(d, &c.Duration)
		default:
			return c, d.Errf("capture: unknown option %q", opt)
		}
		if err != nil {
			return c, err
		}
		if d.NextArg() {
			return c, d.ArgErr()
		}
	}
	if c.File == "" {
		return c, d.Err("capture: a 'file' is required")
	}
	return c, nil
}

// unmarshalPool reads a vhost block's pool { } (an empty block turns
// pooling on with its defaults).
func unmarshalPool(d *caddyfile.Dispenser) (*PoolOptions, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	p := &PoolOptions{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch opt := d.Val(); opt {
		case "max_channels_per_connection":
			err = cfutil.Int(d, &p.MaxChannelsPerConnection, 1)
		case "min_idle":
			err = cfutil.Int(d, &p.MinIdle, 0)
		case "max_connections":
			err = cfutil.Int(d, &p.MaxConnections, 1)
		case "idle_timeout":
			err = cfutil.Duration(d, &p.IdleTimeout)
		case "reuse_channels":
			p.ReuseChannels = true
		case "max_message_size", "max_client_backlog":
			var s string
			if err = cfutil.OneArg(d, &s); err == nil {
				n, perr := humanize.ParseBytes(s)
				if perr != nil || n == 0 || n > math.MaxInt64 {
					err = d.Errf("pool: %s: %q is not a size", opt, s)
				}
				if opt == "max_message_size" {
					p.MaxMessageSize = int64(n)
				} else {
					p.MaxClientBacklog = int64(n)
				}
			}
		default:
			return nil, d.Errf("pool: unknown option %q", opt)
		}
		if err != nil {
			return nil, err
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	return p, nil
}
