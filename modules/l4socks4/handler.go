// Package l4socks4 is layer4.handlers.socks4: a SOCKS4 CONNECT proxy with a
// destination allow-list (ProxyMachine's SOCKS4 example, as config). Put
// caddy-l4's socks4 matcher in front of it. The parsing lives in package
// socks4.
package l4socks4

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/modules/internal/readprelude"
	"github.com/caddyprelude/prelude/modules/relay"
	"github.com/caddyprelude/prelude/socks4"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// Handler connects SOCKS4 clients to the destination they ask for, if it
// is in Allow.
type Handler struct {
	// Destination networks clients may connect to (CIDR). Required: use
	// 0.0.0.0/0 for an open proxy.
	Allow []string `json:"allow,omitempty"`
	// Connect timeout. Default 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	prefixes []netip.Prefix
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.socks4",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision parses Allow and sets defaults.
func (h *Handler) Provision(ctx caddy.Context) error {
	relay.RegisterMetrics(ctx.GetMetricsRegistry())
	h.logger = ctx.Logger()
	if h.DialTimeout == 0 {
		h.DialTimeout = caddy.Duration(5 * time.Second)
	}
	h.prefixes = h.prefixes[:0]
	for _, a := range h.Allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			return fmt.Errorf("allow: %q: %v", a, err)
		}
		h.prefixes = append(h.prefixes, p)
	}
	return nil
}

// Validate requires an allow-list.
func (h *Handler) Validate() error {
	if len(h.Allow) == 0 {
		return errors.New("allow: list the destination networks clients may reach (0.0.0.0/0 for any)")
	}
	return nil
}

// Handle reads the request, connects, replies and relays; anything it will
// not or cannot do is answered with the "rejected" reply.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	_ = cx.SetReadDeadline(time.Now().Add(10 * time.Second))
	req, rest, err := readprelude.Read(cx, socks4.Parse, socks4.ErrNeedMore)
	if err != nil {
		if errors.Is(err, socks4.ErrMalformed) {
			h.reject(cx, "malformed request")
		}
		return nil
	}
	_ = cx.SetReadDeadline(time.Time{})
	if reason := h.refusal(req); reason != "" {
		h.reject(cx, reason, zap.String("destination", req.Addr()))
		return nil
	}
	up, err := net.DialTimeout("tcp", req.Addr(), time.Duration(h.DialTimeout))
	if err != nil {
		h.reject(cx, "connect failed", zap.String("destination", req.Addr()), zap.Error(err))
		return nil
	}
	defer up.Close()
	if _, err := cx.Write(socks4.Reply(socks4.Granted)); err != nil {
		return nil
	}
	if len(rest) > 0 {
		if _, err := up.Write(rest); err != nil {
			return nil
		}
	}
	h.logger.Debug("socks4 connected", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", req.Addr()), zap.String("user", req.User))
	_, _, _ = relay.Relay(cx, up)
	return nil
}

func (h *Handler) refusal(r *socks4.Request) string {
	switch {
	case r.Command != socks4.CmdConnect:
		return "only CONNECT is supported"
	case r.Domain != "":
		return "SOCKS4a domain names are not supported"
	}
	for _, p := range h.prefixes {
		if p.Contains(r.IP) {
			return ""
		}
	}
	return "destination not allowed"
}

func (h *Handler) reject(cx *layer4.Connection, reason string, fields ...zap.Field) {
	h.logger.Debug("socks4 request rejected", append(fields, zap.String("remote", cx.RemoteAddr().String()),
		zap.String("reason", reason))...)
	_ = cx.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := cx.Write(socks4.Reply(socks4.Rejected)); err == nil {
		relay.CloseAfterReply(cx.Conn, time.Second)
	}
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	socks4 {
//		allow <cidr...>
//		dial_timeout <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Allow = append(h.Allow, args...)
		case "dial_timeout":
			if err := cfutil.Duration(d, &h.DialTimeout); err != nil {
				return err
			}
		default:
			return d.Errf("unknown socks4 option %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Handler)(nil)
	_ caddy.Validator       = (*Handler)(nil)
	_ layer4.NextHandler    = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
