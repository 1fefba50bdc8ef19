package l4amqpstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp/stream"
)

func init() {
	caddy.RegisterNetwork(Network, listenQueue)
}

// Network is the listener network of tunnel streams: a layer4 server that
// listens on "amqp/<queue>@<broker>" accepts the streams dialed to <queue>
// on the amqp_brokers app's <broker> (the only broker may go unnamed) and
// runs its routes on each, as on a TCP connection.
const Network = "amqp"

// listenQueue is the caddy.ListenerFunc of the amqp network.
func listenQueue(ctx context.Context, _, host, _ string, _ uint, _ net.ListenConfig) (any, error) {
	cctx, ok := ctx.(caddy.Context)
	if !ok {
		return nil, errors.New("amqp listener: needs a Caddy context")
	}
	queue, name := host, ""
	if i := strings.LastIndex(host, "@"); i >= 0 {
		queue, name = host[:i], host[i+1:]
	}
	if queue == "" {
		return nil, fmt.Errorf("amqp listener %q: the queue name is empty; write amqp/<queue>@<broker>", host)
	}
	b, err := namedBroker(cctx, name)
	if err != nil {
		return nil, fmt.Errorf("amqp listener %q: %w", host, err)
	}
	cfg, err := b.streamConfig()
	if err != nil {
		return nil, fmt.Errorf("amqp listener %q: %w", host, err)
	}
	sc, release, err := b.acquireConn()
	if err != nil {
		return nil, err
	}
	initMetrics(cctx.GetMetricsRegistry())
	redacted := stream.RedactURL(b.url)
	l := &queueListener{
		queue: queue, broker: redacted, spec: b, conn: sc, release: release, cfg: cfg,
		dialTimeout: b.dialTimeout(), done: make(chan struct{}),
		log: caddy.Log().Named("layer4.amqp_listener").With(zap.String("queue", queue), zap.String("broker", redacted)),
	}
	return l, nil
}

// queueListener accepts streams from a queue, reconnecting to the broker
// whenever the connection is lost: Accept blocks meanwhile instead of
// stopping the layer4 server.
type queueListener struct {
	queue       string
	broker      string // redacted URL
	spec        *Broker
	conn        *sharedConn
	release     func()
	cfg         stream.Config
	dialTimeout time.Duration
	log         *zap.Logger

	mu        sync.Mutex
	ln        *stream.Listener
	done      chan struct{}
	closeOnce sync.Once
}

// Accept returns the next stream.
func (l *queueListener) Accept() (net.Conn, error) {
	for {
		ln, err := l.current()
		if err != nil {
			return nil, err
		}
		c, err := ln.Accept()
		if err == nil {
			return c, nil
		}
		if l.closed() {
			return nil, &net.OpError{Op: "accept", Net: Network, Addr: l.Addr(), Err: net.ErrClosed}
		}
		l.log.Warn("lost the broker; reconnecting", zap.Error(err))
		l.forget(ln)
	}
}

// current returns the open queue listener, opening one (with backoff while
// the broker is unreachable) if needed.
func (l *queueListener) current() (*stream.Listener, error) {
	backoff := 250 * time.Millisecond
	for {
		l.mu.Lock()
		ln := l.ln
		l.mu.Unlock()
		if l.closed() {
			return nil, &net.OpError{Op: "accept", Net: Network, Addr: l.Addr(), Err: net.ErrClosed}
		}
		if ln != nil {
			return ln, nil
		}
		err := l.open()
		if err == nil {
			continue
		}
		l.log.Warn("cannot listen on the queue; retrying", zap.Duration("in", backoff), zap.Error(err))
		select {
		case <-time.After(backoff):
		case <-l.done:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (l *queueListener) open() error {
	ctx, cancel := context.WithTimeout(context.Background(), l.dialTimeout)
	defer cancel()
	conn, err := l.conn.get(ctx)
	if err != nil {
		return err
	}
	cfg := l.cfg
	cfg.OnAccept = func(c *stream.Conn) {
		streamsOpen.WithLabelValues(sideAccept, resultAccepted).Inc()
		track(sideAccept, l.broker, "", c)
		// The stream keeps the broker connection open even if a reload
		// removes this listener.
		if _, release, err := l.spec.acquireConn(); err == nil {
			go func() { <-c.Done(); release() }()
		}
	}
	ln, err := cfg.NewListener(conn, l.queue)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed() {
		_ = ln.Close()
		return net.ErrClosed
	}
	l.ln = ln
	l.log.Debug("listening on the queue")
	return nil
}

func (l *queueListener) forget(ln *stream.Listener) {
	_ = ln.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln == ln {
		l.ln = nil
	}
}

func (l *queueListener) closed() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// Close stops accepting; streams already accepted go on.
func (l *queueListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.mu.Lock()
		ln := l.ln
		l.ln = nil
		l.mu.Unlock()
		if ln != nil {
			_ = ln.Close()
		}
		l.release()
	})
	return nil
}

// Addr returns the queue as an amqp address.
func (l *queueListener) Addr() net.Addr { return stream.Addr{Queue: l.queue} }
