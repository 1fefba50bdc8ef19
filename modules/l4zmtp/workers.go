package l4zmtp

import (
	"errors"
	"io"
	"net"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/zmtp"
)

func init() {
	caddy.RegisterModule(&WorkersHandler{})
}

// WorkersHandler accepts worker connections (StreamQ-Proxy's topology:
// workers connect to the proxy), reads each worker's greeting and parks
// the connection in a pool, where a zmtp handler configured with `workers`
// pairs it with one client of the same mechanism. A parked libzmq worker
// gives up after its own ZMQ_HANDSHAKE_IVL (30 s by default) unless it sets
// it to 0; it then simply reconnects.
type WorkersHandler struct {
	// The pool to park workers in.
	Pool string `json:"pool,omitempty"`
	// Time allowed to read a worker's greeting. Default 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	pool   *pool
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*WorkersHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.zmtp_workers",
		New: func() caddy.Module { return new(WorkersHandler) },
	}
}

// Provision joins the pool.
func (h *WorkersHandler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	initMetrics(ctx.GetMetricsRegistry())
	if h.Pool == "" {
		return errors.New("pool: a pool name is required")
	}
	if h.HandshakeTimeout == 0 {
		h.HandshakeTimeout = caddy.Duration(DefaultHandshakeTimeout)
	}
	h.pool = acquirePool(h.Pool)
	return nil
}

// Cleanup leaves the pool.
func (h *WorkersHandler) Cleanup() error {
	releasePool(h.Pool)
	return nil
}

// Handle parks the worker until a client has used it and the pair ended.
func (h *WorkersHandler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	greeting, g, err := serverGreeting(cx, time.Duration(h.HandshakeTimeout))
	if err != nil {
		h.logger.Debug("zmtp worker greeting failed", zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
		return nil
	}
	host, _, err := net.SplitHostPort(cx.RemoteAddr().String())
	if err != nil {
		host = cx.RemoteAddr().String()
	}
	w := &parked{conn: cx.Conn, host: host, greeting: greeting, mechanism: g.Mechanism,
		taken: make(chan struct{}), released: make(chan struct{}), done: make(chan struct{})}
	h.pool.park(w)
	h.logger.Debug("zmtp worker parked", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("pool", h.Pool), zap.String("mechanism", g.Mechanism))
	if !waitTakenOrGone(w) && h.pool.remove(w) {
		h.logger.Debug("zmtp worker left the pool", zap.String("remote", cx.RemoteAddr().String()))
		return nil
	}
	<-w.done // a client owns the connection until the pair ends
	return nil
}

// serverGreeting plays the server's side of the greeting up to the peer's
// complete 64 bytes: it reads the signature, writes the proxy's signature
// and major version, and reads the rest.
func serverGreeting(cx *layer4.Connection, timeout time.Duration) ([]byte, zmtp.Greeting, error) {
	_ = cx.SetDeadline(time.Now().Add(timeout))
	defer cx.SetDeadline(time.Time{})
	greeting := make([]byte, zmtp.GreetingLen)
	if _, err := io.ReadFull(cx, greeting[:zmtp.SignatureLen]); err != nil {
		return nil, zmtp.Greeting{}, err
	}
	if err := zmtp.CheckSignature(greeting); err != nil {
		return nil, zmtp.Greeting{}, err
	}
	if _, err := cx.Write(append(zmtp.Signature(), 3)); err != nil {
		return nil, zmtp.Greeting{}, err
	}
	if _, err := io.ReadFull(cx, greeting[zmtp.SignatureLen:]); err != nil {
		return nil, zmtp.Greeting{}, err
	}
	g, err := zmtp.ParseGreeting(greeting)
	return greeting, g, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	zmtp_workers <pool> {
//		handshake_timeout <duration>
//	}
func (h *WorkersHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return d.ArgErr()
	}
	h.Pool = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if d.Val() != "handshake_timeout" {
			return d.Errf("unknown zmtp_workers option %q", d.Val())
		}
		if err := cfutil.Duration(d, &h.HandshakeTimeout); err != nil {
			return err
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*WorkersHandler)(nil)
	_ caddy.CleanerUpper    = (*WorkersHandler)(nil)
	_ layer4.NextHandler    = (*WorkersHandler)(nil)
	_ caddyfile.Unmarshaler = (*WorkersHandler)(nil)
)
