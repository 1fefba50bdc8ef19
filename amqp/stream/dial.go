package stream

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Dial opens a connection to the broker at url (amqp:// or amqps://) and a
// stream to the listener on queue. The connection is closed with the stream.
func Dial(ctx context.Context, url, queue string) (net.Conn, error) {
	return Config{}.Dial(ctx, url, queue)
}

// DialAMQP opens a stream to the listener on queue over an existing broker
// connection, which stays open when the stream ends.
func DialAMQP(ctx context.Context, conn *amqp.Connection, queue string) (net.Conn, error) {
	return Config{}.DialAMQP(ctx, conn, queue)
}

// Dial is like the package's Dial with this configuration.
func (cfg Config) Dial(ctx context.Context, url, queue string) (net.Conn, error) {
	conn, err := cfg.connect(ctx, url)
	if err != nil {
		return nil, err
	}
	c, err := cfg.dial(ctx, acquire(conn, true), queue)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DialAMQP is like the package's DialAMQP with this configuration.
func (cfg Config) DialAMQP(ctx context.Context, conn *amqp.Connection, queue string) (net.Conn, error) {
	c, err := cfg.dial(ctx, acquire(conn, false), queue)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// dial runs the dialer's side of the handshake: publish a connect request
// to the listener queue (mandatory: no listener means it comes back), then
// wait for the accept. It releases t on failure.
func (cfg Config) dial(ctx context.Context, t *transport, queue string) (c *Conn, err error) {
	cfg = cfg.withDefaults()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	remote := Addr{Queue: queue}
	wrap := func(err error) error {
		return &net.OpError{Op: "dial", Net: "amqp", Addr: remote, Err: err}
	}
	ep, err := openEndpoint(cfg, t.conn)
	if err != nil {
		t.release()
		return nil, wrap(err)
	}
	defer func() {
		if err != nil {
			_ = ep.ch.Close()
			t.release()
		}
	}()
	my := newToken()
	hello := appendHeader(nil, header{kind: kindConnect, limit: uint64(cfg.Window)})
	hello = append(hello, my[:]...)
	ttl := time.Until(deadlineOf(ctx))
	err = ep.ch.PublishWithContext(ctx, "", queue, true, false, amqp.Publishing{
		ReplyTo:    ep.queue,
		Expiration: strconv.FormatInt(max(ttl.Milliseconds(), 1), 10),
		Body:       hello,
	})
	if err != nil {
		return nil, wrap(err)
	}
	for {
		select {
		case <-ep.returns:
			return nil, wrap(ErrRefused)
		case e := <-ep.closes:
			return nil, wrap(&brokerError{errOr(e)})
		case <-ctx.Done():
			return nil, wrap(errDeadline)
		case <-ep.confirms:
			// The connect request reached the queue; keep waiting.
		case d, ok := <-ep.deliveries:
			if !ok {
				return nil, wrap(&brokerError{amqp.ErrClosed})
			}
			_ = d.Ack(false)
			h, payload, perr := parseMessage(d.Body)
			if perr != nil || h.kind != kindAccept || h.token != my || len(payload) != tokenLen || d.ReplyTo == "" {
				continue // not our listener's answer: ignore it
			}
			var peer token
			copy(peer[:], payload)
			c = newConn(cfg, t, ep.ch, Addr{Queue: ep.queue}, Addr{Queue: d.ReplyTo}, my, peer, h.limit)
			c.service = queue
			c.start(ep.deliveries, ep.returns, ep.confirms, ep.closes)
			return c, nil
		}
	}
}

func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func errOr(e *amqp.Error) error {
	if e == nil {
		return amqp.ErrClosed
	}
	return e
}

func newToken() token {
	var t token
	_, _ = rand.Read(t[:])
	return t
}

// endpoint is one end's channel and private queue, before the handshake.
type endpoint struct {
	ch         *amqp.Channel
	queue      string
	deliveries <-chan amqp.Delivery
	returns    chan amqp.Return
	confirms   chan amqp.Confirmation
	closes     chan *amqp.Error
}

// openEndpoint opens a channel in confirm mode with a server-named,
// exclusive, auto-delete queue consumed with manual acks and a prefetch
// limit, so the broker never pushes more than that at this end.
func openEndpoint(cfg Config, conn *amqp.Connection) (*endpoint, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, &brokerError{err}
	}
	ep := &endpoint{ch: ch}
	if err := ep.setup(cfg); err != nil {
		_ = ch.Close()
		return nil, &brokerError{err}
	}
	return ep, nil
}

func (ep *endpoint) setup(cfg Config) error {
	ch := ep.ch
	if err := ch.Confirm(false); err != nil {
		return err
	}
	if err := ch.Qos(cfg.prefetch(), 0, false); err != nil {
		return err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	ep.queue = q.Name
	ep.returns = ch.NotifyReturn(make(chan amqp.Return, 16))
	ep.confirms = ch.NotifyPublish(make(chan amqp.Confirmation, 4*cfg.prefetch()))
	ep.closes = ch.NotifyClose(make(chan *amqp.Error, 1))
	ep.deliveries, err = ch.Consume(q.Name, "", false, true, false, false, nil)
	return err
}

// Connect opens a broker connection for url with this configuration's TLS,
// heartbeat and connection name, for DialAMQP and ListenAMQP to share.
// Errors never contain the URL's password.
func (cfg Config) Connect(ctx context.Context, url string) (*amqp.Connection, error) {
	return cfg.connect(ctx, url)
}

func (cfg Config) connect(ctx context.Context, rawURL string) (*amqp.Connection, error) {
	if _, err := amqp.ParseURI(rawURL); err != nil {
		return nil, fmt.Errorf("amqp stream: invalid broker URL %s", RedactURL(rawURL))
	}
	ac := cfg.amqpConfig()
	deadline := deadlineOf(ctx)
	if deadline.IsZero() {
		deadline = time.Now().Add(DefaultDialTimeout)
	}
	ac.Dial = func(network, addr string) (net.Conn, error) {
		d := net.Dialer{Deadline: deadline}
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return conn, conn.SetDeadline(deadline) // cleared by amqp091-go after the handshake
	}
	conn, err := amqp.DialConfig(rawURL, ac)
	if err != nil {
		var aerr *amqp.Error
		if errors.As(err, &aerr) {
			return nil, fmt.Errorf("amqp stream: broker %s refused the connection: %w", RedactURL(rawURL), err)
		}
		return nil, fmt.Errorf("amqp stream: connecting to broker %s: %w", RedactURL(rawURL), err)
	}
	return conn, nil
}

// RedactURL returns rawURL with its password replaced, for logs and errors.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}
