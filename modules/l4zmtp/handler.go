package l4zmtp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/internal/readprelude"
	"github.com/caddyprelude/prelude/modules/internal/startlog"
	"github.com/caddyprelude/prelude/modules/relay"
	"github.com/caddyprelude/prelude/zmtp"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// DefaultHandshakeTimeout bounds the greeting exchange with client and worker.
const DefaultHandshakeTimeout = 10 * time.Second

// Handler pairs each ZMTP client connection with one worker connection and
// relays bytes untouched after the greeting, so that the security handshake
// (CURVE included) and all traffic stay end to end between them: the proxy
// holds no keys and cannot read CURVE traffic.
//
// It answers the client's signature with its own signature and major
// version, reads the rest of the client's greeting (version, mechanism),
// dials a worker of its farm, sends the worker the client's greeting,
// consumes the worker's first 11 bytes (signature and major) and relays the
// rest, the worker's own minor version and mechanism included.
type Handler struct {
	// The worker farm (to, lb_policy including least_conn, dial_timeout, ...).
	farm.Farm
	// Mechanisms accepted from clients (NULL, PLAIN, CURVE); empty accepts
	// any. Others are closed after their greeting, as libzmq does on a
	// mechanism mismatch.
	Mechanisms []string `json:"mechanisms,omitempty"`
	// Time allowed for the greeting exchanges. Default 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`
	// Pair with workers that connected to a zmtp_workers listener of this
	// pool, instead of dialing `to`.
	Workers string `json:"workers,omitempty"`
	// How long a client waits for an idle worker of its mechanism before it
	// is closed. Default 10s.
	PairTimeout caddy.Duration `json:"pair_timeout,omitempty"`
	// Read the client's READY (NULL) or HELLO (PLAIN) before choosing a
	// worker, for {l4.zmtp.socket_type}, {l4.zmtp.identity} and
	// {l4.zmtp.user} and for sticky identity. The proxy then completes the
	// client's greeting itself, with the client's own minor version.
	InspectMetadata bool `json:"inspect_metadata,omitempty"`
	// Send a client to the same worker each time: "identity" (the routing
	// identity from READY; needs inspect_metadata; clients without one are
	// keyed by address) or "remote_ip". The next workers in order are the
	// fallbacks when that worker is gone. Only with `to`.
	Sticky string `json:"sticky,omitempty"`

	pool   *pool
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.zmtp",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and provisions the farm.
func (h *Handler) Provision(ctx caddy.Context) error {
	startlog.Listeners(ctx)
	relay.RegisterMetrics(ctx.GetMetricsRegistry())
	h.logger = ctx.Logger()
	initMetrics(ctx.GetMetricsRegistry())
	if h.HandshakeTimeout == 0 {
		h.HandshakeTimeout = caddy.Duration(DefaultHandshakeTimeout)
	}
	for _, m := range h.Mechanisms {
		if !slices.Contains([]string{"NULL", "PLAIN", "CURVE", "GSSAPI"}, m) {
			return fmt.Errorf("mechanisms: unknown mechanism %q", m)
		}
	}
	switch {
	case h.Sticky != "" && h.Sticky != "identity" && h.Sticky != "remote_ip":
		return fmt.Errorf("sticky: %q is not identity or remote_ip", h.Sticky)
	case h.Sticky == "identity" && !h.InspectMetadata:
		return errors.New("sticky identity: needs inspect_metadata to read the identity")
	}
	if h.Workers != "" {
		if len(h.To) > 0 || h.PerConnection() {
			return errors.New("workers: pairs with parked workers; it excludes to and lookup")
		}
		if h.PairTimeout == 0 {
			h.PairTimeout = caddy.Duration(DefaultHandshakeTimeout)
		}
		h.pool = acquirePool(h.Workers)
		return nil
	}
	h.Farm.Name = "zmtp"
	return h.Farm.Provision(ctx)
}

// Validate checks the farm unless the handler pairs with a worker pool.
func (h *Handler) Validate() error {
	if h.Workers != "" {
		return nil
	}
	return h.Farm.Validate()
}

// Cleanup releases the farm or the pool.
func (h *Handler) Cleanup() error {
	if h.pool != nil {
		releasePool(h.Workers)
	}
	return h.Farm.Cleanup()
}

// Handle reads the client's greeting, pairs it with a worker and relays.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	timeout := time.Duration(h.HandshakeTimeout)
	greeting, g, err := serverGreeting(cx, timeout)
	if err != nil {
		pairings.WithLabelValues(resultBadGreeting).Inc()
		h.logger.Debug("zmtp greeting refused", zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
		return nil
	}
	if repl, ok := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("l4.zmtp.version", strconv.Itoa(int(g.Major))+"."+strconv.Itoa(int(g.Minor)))
		repl.Set("l4.zmtp.mechanism", g.Mechanism)
	}
	if len(h.Mechanisms) > 0 && !slices.Contains(h.Mechanisms, g.Mechanism) {
		pairings.WithLabelValues(resultMechanismRefused).Inc()
		h.logger.Debug("zmtp mechanism not allowed", zap.String("remote", cx.RemoteAddr().String()),
			zap.String("mechanism", g.Mechanism))
		refuse(cx, g, false, "mechanism "+g.Mechanism+" is not accepted here")
		return nil
	}
	var meta metadata
	if h.InspectMetadata && (g.Mechanism == "NULL" || g.Mechanism == "PLAIN") {
		if meta, err = inspect(cx, g, timeout); err != nil {
			pairings.WithLabelValues(resultBadGreeting).Inc()
			h.logger.Debug("zmtp metadata unreadable", zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
			return nil
		}
		if repl, ok := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); ok {
			repl.Set("l4.zmtp.socket_type", meta.socketType)
			repl.Set("l4.zmtp.identity", meta.identity)
			repl.Set("l4.zmtp.user", meta.user)
		}
	}
	if h.pool != nil {
		return h.pairWithParked(cx, greeting, g, meta)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if repl, ok := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); ok {
		ctx = farm.WithReplacer(ctx, repl) // a lookup's key, placeholders in to
	}
	attempt := func(ctx context.Context, _ *farm.Member, conn net.Conn) error {
		if meta.first != nil {
			return inspectedWorkerHandshake(ctx, conn, greeting, meta.first)
		}
		return workerHandshake(ctx, conn, greeting)
	}
	var lease *farm.Lease
	switch key := h.stickyKey(cx, meta); {
	case key != "":
		lease, err = h.DialSticky(ctx, cx.RemoteAddr(), key, attempt)
	default:
		lease, err = h.Dial(ctx, cx.RemoteAddr(), attempt)
	}
	var noRoute *farm.NoRouteError
	var refused *farm.RefusedError
	switch {
	case errors.As(err, &noRoute):
		pairings.WithLabelValues(resultNoRoute).Inc()
		refuse(cx, g, meta.first != nil, noRoute.Error())
		return nil
	case errors.As(err, &refused):
		pairings.WithLabelValues(resultLookupRefused).Inc()
		refuse(cx, g, meta.first != nil, "refused: "+refused.Reason)
		return nil
	case err != nil:
		pairings.WithLabelValues(resultWorkerUnreachable).Inc()
		h.logger.Debug("zmtp worker unavailable", zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
		refuse(cx, g, meta.first != nil, "no worker reachable")
		return nil
	}
	defer lease.Release()
	defer lease.Conn.Close()
	h.logger.Debug("zmtp pair", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", lease.Member.Addr), zap.String("mechanism", g.Mechanism),
		zap.String("identity", meta.identity), zap.String("socket_type", meta.socketType), zap.String("user", meta.user))
	pairings.WithLabelValues(resultPaired).Inc()
	p := addPair(&Pair{Client: cx.RemoteAddr().String(), Worker: lease.Member.Addr, Mechanism: g.Mechanism,
		Since: time.Now(), client: cx.Conn})
	defer removePair(p.ID)
	up, down, err := relay.Relay(cx, lease.Conn)
	h.logger.Debug("zmtp pair ended", zap.String("remote", cx.RemoteAddr().String()),
		zap.Int64("bytes_upstream", up), zap.Int64("bytes_downstream", down), zap.Error(err))
	return nil
}

// workerHandshake sends the client's greeting to the worker and consumes
// the worker's signature and major version, which the proxy already gave
// the client; the rest of the worker's greeting reaches the client through
// the relay.
func workerHandshake(ctx context.Context, conn net.Conn, clientGreeting []byte) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write(clientGreeting); err != nil {
		return err
	}
	head := make([]byte, zmtp.SignatureLen+1)
	if _, err := io.ReadFull(conn, head); err != nil {
		return fmt.Errorf("worker greeting: %w", err)
	}
	if err := zmtp.CheckSignature(head); err != nil {
		return err
	}
	if head[zmtp.SignatureLen] < 3 {
		return errors.New("worker speaks ZMTP below 3.0")
	}
	_ = conn.SetDeadline(time.Time{})
	return nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	zmtp {
//		mechanism NULL|PLAIN|CURVE ...
//		to <address...>
//		<farm options: lb_policy, dial_timeout, ...>
//		handshake_timeout <duration>
//		workers <pool>
//		pair_timeout <duration>
//		inspect_metadata
//		sticky identity|remote_ip
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
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
		case "mechanism":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Mechanisms = append(h.Mechanisms, args...)
		case "workers", "sticky":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if opt == "workers" {
				h.Workers = d.Val()
			} else {
				h.Sticky = d.Val()
			}
		case "inspect_metadata":
			h.InspectMetadata = true
		case "handshake_timeout":
			if err := cfutil.Duration(d, &h.HandshakeTimeout); err != nil {
				return err
			}
		case "pair_timeout":
			if err := cfutil.Duration(d, &h.PairTimeout); err != nil {
				return err
			}
		default:
			return d.Errf("unknown zmtp handler option %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Handler)(nil)
	_ caddy.CleanerUpper    = (*Handler)(nil)
	_ caddy.Validator       = (*Handler)(nil)
	_ layer4.NextHandler    = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)

// pairWithParked takes an idle worker of the client's mechanism from the
// pool (waiting up to pair_timeout), feeds each side the rest of the
// other's greeting so that both complete their own handshake, and relays.
func (h *Handler) pairWithParked(cx *layer4.Connection, greeting []byte, g zmtp.Greeting, meta metadata) error {
	start := time.Now() // before the deadline starts: a timed-out hold counts the whole pair_timeout
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.PairTimeout))
	w, err := h.pool.take(ctx, g.Mechanism, h.stickyKey(cx, meta))
	cancel()
	holdTime.Observe(time.Since(start).Seconds())
	if err != nil {
		pairings.WithLabelValues(resultNoWorker).Inc()
		h.logger.Debug("zmtp client not paired", zap.String("remote", cx.RemoteAddr().String()),
			zap.String("pool", h.Workers), zap.String("mechanism", g.Mechanism), zap.Error(err))
		refuse(cx, g, meta.first != nil, "no idle "+g.Mechanism+" worker within "+time.Duration(h.PairTimeout).String())
		return nil
	}
	defer close(w.done)
	defer h.pool.release(w)
	defer w.conn.Close()
	<-w.released    // the worker side has stopped watching the connection
	const tail = 11 // the signature and major each side already has from the proxy
	// The worker gets the rest of the client's greeting (and the command
	// inspect_metadata read); the client gets the rest of the worker's,
	// unless inspecting already completed the client's greeting.
	if _, err := w.conn.Write(append(greeting[tail:len(greeting):len(greeting)], meta.first...)); err != nil {
		return nil
	}
	if meta.first == nil {
		if _, err := cx.Write(w.greeting[tail:]); err != nil {
			return nil
		}
	}
	h.logger.Debug("zmtp pair", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", w.conn.RemoteAddr().String()), zap.String("pool", h.Workers),
		zap.String("mechanism", g.Mechanism))
	pairings.WithLabelValues(resultPaired).Inc()
	p := addPair(&Pair{Client: cx.RemoteAddr().String(), Worker: w.conn.RemoteAddr().String(),
		Mechanism: g.Mechanism, Pool: h.Workers, Since: time.Now(), client: cx.Conn})
	defer removePair(p.ID)
	up, down, err := relay.Relay(cx, w.conn)
	h.logger.Debug("zmtp pair ended", zap.String("remote", cx.RemoteAddr().String()),
		zap.Int64("bytes_upstream", up), zap.Int64("bytes_downstream", down), zap.Error(err))
	return nil
}

// metadata is what inspect_metadata learnt from the client's first command.
type metadata struct {
	socketType, identity, user string
	first                      []byte // the client's bytes read so far, replayed to the worker
}

// maxFirstFrame bounds the READY or HELLO the proxy reads.
const maxFirstFrame = 64 << 10

// inspect completes the client's greeting with the proxy's own tail (the
// client's minor version and mechanism) and reads the client's READY (NULL)
// or HELLO (PLAIN). The PLAIN password is never kept.
func inspect(cx *layer4.Connection, g zmtp.Greeting, timeout time.Duration) (metadata, error) {
	_ = cx.SetDeadline(time.Now().Add(timeout))
	defer cx.SetDeadline(time.Time{})
	if _, err := cx.Write(zmtp.GreetingTail(g.Minor, g.Mechanism)); err != nil {
		return metadata{}, err
	}
	frame, rest, err := readprelude.Read(cx, func(b []byte) (rawFrame, int, error) {
		f, n, err := zmtp.ParseFrame(b, maxFirstFrame)
		return rawFrame{Frame: f, raw: b[:n]}, n, err
	}, zmtp.ErrNeedMore)
	if err != nil {
		return metadata{}, err
	}
	if !frame.IsCommand() {
		return metadata{}, errors.New("the client's first frame is not a command")
	}
	cmd, err := zmtp.ParseCommand(frame.Body)
	if err != nil {
		return metadata{}, err
	}
	var m metadata
	switch cmd.Name {
	case "READY":
		props, err := zmtp.ParseMetadata(cmd.Data)
		if err != nil {
			return metadata{}, err
		}
		for _, p := range props {
			switch strings.ToLower(p.Name) {
			case "socket-type":
				m.socketType = string(p.Value)
			case "identity":
				m.identity = string(p.Value)
			}
		}
	case "HELLO":
		if m.user, err = zmtp.PlainUsername(cmd.Data); err != nil {
			return metadata{}, err
		}
	default:
		return metadata{}, fmt.Errorf("unexpected %s command", cmd.Name)
	}
	m.first = append(append(make([]byte, 0, len(frame.raw)+len(rest)), frame.raw...), rest...)
	return m, nil
}

// rawFrame is a parsed frame with the bytes it came in, replayed as they are.
type rawFrame struct {
	zmtp.Frame
	raw []byte
}

// inspectedWorkerHandshake gives the worker the client's greeting, consumes
// the worker's whole greeting (the client already has the proxy's), and
// replays the client's first command and whatever followed it.
func inspectedWorkerHandshake(ctx context.Context, conn net.Conn, clientGreeting, first []byte) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write(clientGreeting); err != nil {
		return err
	}
	theirs := make([]byte, zmtp.GreetingLen)
	if _, err := io.ReadFull(conn, theirs); err != nil {
		return fmt.Errorf("worker greeting: %w", err)
	}
	if _, err := zmtp.ParseGreeting(theirs); err != nil {
		return err
	}
	if _, err := conn.Write(first); err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Time{})
	return nil
}

// stickyKey is the key a sticky handler hashes to pick the worker, or "".
func (h *Handler) stickyKey(cx *layer4.Connection, m metadata) string {
	switch {
	case h.Sticky == "identity" && m.identity != "":
		return "identity:" + m.identity
	case h.Sticky != "":
		host, _, err := net.SplitHostPort(cx.RemoteAddr().String())
		if err != nil {
			host = cx.RemoteAddr().String()
		}
		return "ip:" + host
	}
	return ""
}

// refuse ends a client's handshake with a ZMTP ERROR command carrying
// reason: it completes the client's greeting first (with the client's own
// minor version and mechanism) unless that was done already, then
// half-closes and drains, so the client reads the reason instead of a reset.
func refuse(cx *layer4.Connection, g zmtp.Greeting, greeted bool, reason string) {
	var b []byte
	if !greeted {
		b = zmtp.GreetingTail(g.Minor, g.Mechanism)
	}
	b = zmtp.AppendError(b, reason)
	_ = cx.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := cx.Write(b); err == nil {
		relay.CloseAfterReply(cx.Conn, time.Second)
	}
}
