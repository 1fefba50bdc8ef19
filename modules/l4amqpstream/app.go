package l4amqpstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
	"github.com/caddyprelude/prelude/modules/internal/tlsclient"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("amqp_brokers", parseAppCaddyfile)
}

// App names AMQP brokers once, so that "amqp/<queue>@<name>" listener
// addresses of layer4 servers, and amqp_tunnel handlers, can refer to them
// without repeating URLs and credentials.
type App struct {
	Brokers map[string]*Broker `json:"brokers,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "amqp_brokers",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision validates every broker.
func (a *App) Provision(caddy.Context) error {
	for name, b := range a.Brokers {
		if name == "" || strings.ContainsAny(name, "@/:") {
			return fmt.Errorf("brokers: name %q must be non-empty, without '@', '/' or ':'", name)
		}
		if err := b.validate(); err != nil {
			return fmt.Errorf("brokers: %s: %w", name, err)
		}
	}
	return nil
}

// Start does nothing: connections open when a listener or stream needs them.
func (a *App) Start() error { return nil }

// Stop does nothing: listeners and streams release their connections.
func (a *App) Stop() error { return nil }

// broker returns the named broker; with an empty name, the only one.
func (a *App) broker(name string) (*Broker, error) {
	if name == "" {
		if len(a.Brokers) == 1 {
			for _, b := range a.Brokers {
				return b, nil
			}
		}
		return nil, fmt.Errorf("no broker named in the address and the amqp_brokers app has %d; name one as <queue>@<broker>", len(a.Brokers))
	}
	b, ok := a.Brokers[name]
	if !ok {
		names := make([]string, 0, len(a.Brokers))
		for n := range a.Brokers {
			names = append(names, n)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("no broker %q in the amqp_brokers app (have: %s)", name, strings.Join(names, ", "))
	}
	return b, nil
}

// namedBroker finds a broker of the amqp_brokers app.
func namedBroker(ctx caddy.Context, name string) (*Broker, error) {
	appAny, err := ctx.AppIfConfigured("amqp_brokers")
	if err != nil {
		if errors.Is(err, caddy.ErrNotConfigured) {
			return nil, fmt.Errorf("broker %q: no amqp_brokers app is configured", name)
		}
		return nil, err
	}
	return appAny.(*App).broker(name)
}

// parseAppCaddyfile sets up the app from the global option. Syntax:
//
//	amqp_brokers {
//		<name> <url> {
//			<option as for amqp_tunnel>
//		}
//	}
func parseAppCaddyfile(d *caddyfile.Dispenser, existing any) (any, error) {
	app := &App{Brokers: map[string]*Broker{}}
	if prev, ok := existing.(httpcaddyfile.App); ok {
		if err := json.Unmarshal(prev.Value, app); err != nil {
			return nil, err
		}
	}
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		b := &Broker{}
		if !d.NextArg() {
			return nil, d.Errf("broker %s: a URL is required", name)
		}
		b.URL = d.Val()
		if d.NextArg() {
			return nil, d.Errf("broker %s: takes a URL, got more", name)
		}
		for sub := d.Nesting(); d.NextBlock(sub); {
			if err := b.unmarshalOption(d); err != nil {
				return nil, err
			}
		}
		if _, dup := app.Brokers[name]; dup {
			return nil, d.Errf("broker %s: defined twice", name)
		}
		app.Brokers[name] = b
	}
	return httpcaddyfile.App{Name: "amqp_brokers", Value: caddyconfig.JSON(app, nil)}, nil
}

// unmarshalOption parses one broker option at the dispenser's token.
func (b *Broker) unmarshalOption(d *caddyfile.Dispenser) error {
	switch opt := d.Val(); opt {
	case "tls":
		c, err := tlsclient.Unmarshal(d)
		if err != nil {
			return err
		}
		b.TLS = c
		return nil
	case "window":
		return byteSize(d, &b.Window)
	case "message_size":
		return byteSize(d, &b.MessageSize)
	case "keepalive":
		return cfutil.Duration(d, &b.Keepalive)
	case "keepalive_timeout":
		return cfutil.Duration(d, &b.KeepaliveTimeout)
	case "retransmit_timeout":
		return cfutil.Duration(d, &b.RetransmitTimeout)
	case "dial_timeout":
		return cfutil.Duration(d, &b.DialTimeout)
	case "heartbeat":
		return cfutil.Duration(d, &b.Heartbeat)
	default:
		return d.Errf("unknown option %q", opt)
	}
}

// byteSize reads a size such as 1MiB or 65536.
func byteSize(d *caddyfile.Dispenser, dst *int) error {
	opt := d.Val()
	var s string
	if err := cfutil.OneArg(d, &s); err != nil {
		return err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<30 {
		return d.Errf("%s: %q is not a size between 1 byte and 1GiB", opt, s)
	}
	*dst = int(n)
	return nil
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)
