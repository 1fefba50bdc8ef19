package l4amqpstream

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp/stream"
	"github.com/caddyprelude/prelude/modules/internal/startlog"
	"github.com/caddyprelude/prelude/modules/relay"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// Handler carries each connection into a stream to a listener queue on an
// AMQP broker (TCP over AMQP). The other end is a layer4 server listening
// on "amqp/<queue>", or any program using package amqp/stream.
type Handler struct {
	// The broker, inline (url, tls, window, ...) ...
	Broker
	// ... or by name from the amqp_brokers app.
	BrokerName string `json:"broker,omitempty"`
	// The listener queue to open streams to.
	Queue string `json:"queue,omitempty"`

	broker   *Broker
	conn     *sharedConn
	release  func()
	cfg      stream.Config
	redacted string
	logger   *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.amqp_tunnel",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves the broker and takes a reference on its shared
// connection (opened at the first stream).
func (h *Handler) Provision(ctx caddy.Context) error {
	startlog.Listeners(ctx)
	relay.RegisterMetrics(ctx.GetMetricsRegistry())
	h.logger = ctx.Logger()
	initMetrics(ctx.GetMetricsRegistry())
	if h.Queue == "" {
		return errors.New("queue: the listener queue to tunnel to is required")
	}
	switch {
	case h.BrokerName != "" && h.URL != "":
		return errors.New("broker, url: give one, not both")
	case h.BrokerName != "":
		b, err := namedBroker(ctx, h.BrokerName)
		if err != nil {
			return err
		}
		h.broker = b
	default:
		if err := h.Broker.validate(); err != nil {
			return err
		}
		h.broker = &h.Broker
	}
	cfg, err := h.broker.streamConfig()
	if err != nil {
		return err
	}
	h.cfg = cfg
	h.redacted = stream.RedactURL(h.broker.url)
	h.conn, h.release, err = h.broker.acquireConn()
	return err
}

// Cleanup releases the broker connection; streams still running hold their
// own references, so a reload does not cut them.
func (h *Handler) Cleanup() error {
	if h.release != nil {
		h.release()
	}
	return nil
}

// Handle opens a stream to the queue and relays the connection through it.
// When nobody listens, or the broker is unreachable, the client's
// connection is reset at once: there is no protocol to say more in.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	log := h.logger.With(zap.String("remote", cx.RemoteAddr().String()), zap.String("queue", h.Queue))
	_, release, err := h.broker.acquireConn() // this stream's own reference
	if err != nil {
		return err
	}
	defer release()
	ctx, cancel := context.WithTimeout(cx.Context, h.broker.dialTimeout())
	defer cancel()
	s, err := h.open(ctx)
	if err != nil {
		result := resultBrokerFailed
		if errors.Is(err, syscall.ECONNREFUSED) {
			result = resultRefused
		}
		streamsOpen.WithLabelValues(sideDial, result).Inc()
		log.Debug("tunnel not opened", zap.String("broker", h.redacted), zap.Error(err))
		resetClient(cx)
		return nil
	}
	streamsOpen.WithLabelValues(sideDial, resultOpened).Inc()
	track(sideDial, h.redacted, cx.RemoteAddr().String(), s)
	log.Debug("tunnel opened", zap.String("local_queue", s.LocalAddr().String()), zap.String("peer_queue", s.RemoteAddr().String()))
	up, down, err := relay.Relay(cx, resetOnError{s, cx.Conn})
	_ = s.Close()
	log.Debug("tunnel closed", zap.Int64("bytes_up", up), zap.Int64("bytes_down", down), zap.Error(err))
	return nil
}

func (h *Handler) open(ctx context.Context) (*stream.Conn, error) {
	conn, err := h.conn.get(ctx)
	if err != nil {
		return nil, err
	}
	c, err := h.cfg.DialAMQP(ctx, conn, h.Queue)
	if err != nil {
		return nil, err
	}
	return c.(*stream.Conn), nil
}

// resetOnError is the stream as the relay sees it: when the stream fails
// (broker lost, peer reset) it arms a TCP reset on the client's connection
// before the relay closes it, so a cut tunnel never looks like a finished
// one. The stream side is not a socket, so the relay reads it the usual
// way either way.
type resetOnError struct {
	*stream.Conn
	client net.Conn
}

func (r resetOnError) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	if err != nil && err != io.EOF {
		armReset(r.client)
	}
	return n, err
}

func (r resetOnError) Write(b []byte) (int, error) {
	n, err := r.Conn.Write(b)
	if err != nil {
		armReset(r.client)
	}
	return n, err
}

func armReset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
}

// resetClient closes the client's connection with a TCP reset, so that the
// client sees a failed connection rather than an empty, clean one.
func resetClient(cx *layer4.Connection) {
	armReset(cx.Conn)
	_ = cx.Conn.Close()
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	amqp_tunnel <broker_url|broker_name> <queue> {
//		tls {
//			ca <pem_file>
//			server_name <name>
//			cert <pem_file>
//			key <pem_file>
//			insecure_skip_verify
//		}
//		window <bytes>
//		message_size <bytes>
//		keepalive <duration>
//		keepalive_timeout <duration>
//		retransmit_timeout <duration>
//		dial_timeout <duration>
//		heartbeat <duration>
//	}
//
// A first argument without "://" names a broker of the amqp_brokers app,
// which then supplies every option.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive
	var target string
	if !d.Args(&target, &h.Queue) {
		return d.ArgErr()
	}
	if d.NextArg() {
		return d.Errf("amqp_tunnel: takes a broker and a queue, got more")
	}
	if isURL(target) {
		h.URL = target
	} else {
		h.BrokerName = target
	}
	for d.NextBlock(0) {
		if h.BrokerName != "" {
			return d.Errf("%s: options belong to broker %q in the amqp_brokers app", d.Val(), h.BrokerName)
		}
		if err := h.Broker.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

// isURL tells a broker URL (or a placeholder standing for one) from a
// broker name.
func isURL(s string) bool {
	return strings.Contains(s, "://") || strings.HasPrefix(s, "{")
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Handler)(nil)
	_ caddy.CleanerUpper    = (*Handler)(nil)
	_ layer4.NextHandler    = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
)
