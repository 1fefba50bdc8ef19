package stream

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	amqp "github.com/rabbitmq/amqp091-go"
)

// listenBacklog is how many accepted streams wait for Accept; the same
// number of connect requests may wait unacknowledged at the broker, where
// another listener on the queue can take them.
const listenBacklog = 16

// Listener accepts streams dialed to its queue. Several listeners, in one
// process or many, may serve the same queue: the broker hands each connect
// request to one of them, and to the others when one goes away.
type Listener struct {
	cfg   Config
	t     *transport
	ch    *amqp.Channel
	queue string

	backlog   chan *Conn
	done      chan struct{}
	closeOnce sync.Once
	loopDone  chan struct{}
	rejected  atomic.Uint64

	consumerTag string
}

// Listen opens a connection to the broker at url and listens on queue. The
// connection is closed when the listener and all its streams are closed.
func Listen(url, queue string) (net.Listener, error) { return Config{}.Listen(url, queue) }

// ListenAMQP listens on queue over an existing broker connection.
func ListenAMQP(conn *amqp.Connection, queue string) (net.Listener, error) {
	return Config{}.ListenAMQP(conn, queue)
}

// Listen is like the package's Listen with this configuration.
func (cfg Config) Listen(url, queue string) (net.Listener, error) {
	conn, err := cfg.connect(context.Background(), url)
	if err != nil {
		return nil, err
	}
	l, err := cfg.listen(acquire(conn, true), queue)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// ListenAMQP is like the package's ListenAMQP with this configuration.
func (cfg Config) ListenAMQP(conn *amqp.Connection, queue string) (net.Listener, error) {
	l, err := cfg.listen(acquire(conn, false), queue)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// NewListener is ListenAMQP returning the concrete type.
func (cfg Config) NewListener(conn *amqp.Connection, queue string) (*Listener, error) {
	return cfg.listen(acquire(conn, false), queue)
}

// listen declares the listener queue (non-durable, auto-delete, shared) and
// consumes connect requests from it. It releases t on failure.
func (cfg Config) listen(t *transport, queue string) (*Listener, error) {
	cfg = cfg.withDefaults()
	fail := func(err error) (*Listener, error) {
		t.release()
		return nil, &net.OpError{Op: "listen", Net: "amqp", Addr: Addr{Queue: queue}, Err: err}
	}
	ch, err := t.conn.Channel()
	if err != nil {
		return fail(&brokerError{err})
	}
	tok := newToken()
	consumerTag := fmt.Sprintf("prelude-listener-%x", tok[:8])
	setup := func() (<-chan amqp.Delivery, error) {
		if err := ch.Qos(listenBacklog, 0, false); err != nil {
			return nil, err
		}
		if _, err := ch.QueueDeclare(queue, false, true, false, false, nil); err != nil {
			return nil, err
		}
		return ch.Consume(queue, consumerTag, false, false, false, false, nil)
	}
	deliveries, err := setup()
	if err != nil {
		_ = ch.Close()
		return fail(&brokerError{err})
	}
	l := &Listener{
		cfg: cfg, t: t, ch: ch, queue: queue,
		backlog: make(chan *Conn, listenBacklog), done: make(chan struct{}), loopDone: make(chan struct{}),
		consumerTag: consumerTag,
	}
	go l.acceptLoop(deliveries)
	return l, nil
}

// Accept waits for the next stream.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c, ok := <-l.backlog:
		if ok {
			return c, nil
		}
	default:
	}
	select {
	case c, ok := <-l.backlog:
		if ok {
			return c, nil
		}
	case <-l.done:
	case <-l.loopDone:
		if !isClosed(l.done) {
			return nil, &net.OpError{Op: "accept", Net: "amqp", Addr: l.Addr(), Err: l.lostErr()}
		}
	}
	return nil, &net.OpError{Op: "accept", Net: "amqp", Addr: l.Addr(), Err: net.ErrClosed}
}

// lostErr explains why connect requests stopped arriving.
func (l *Listener) lostErr() error {
	if err := l.t.err(); err != nil {
		return &brokerError{err}
	}
	return &brokerError{amqp.ErrClosed}
}

// Addr returns the listener queue.
func (l *Listener) Addr() net.Addr { return Addr{Queue: l.queue} }

// Rejected counts connect requests dropped as malformed.
func (l *Listener) Rejected() uint64 { return l.rejected.Load() }

// Close stops accepting. Streams already accepted go on; streams
// established but not yet accepted are reset.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		// Cancel first and close the channel only once the accept loop has
		// stopped acking: a frame after the close would fail the connection.
		if err := l.ch.Cancel(l.consumerTag, false); err == nil {
			<-l.loopDone
		}
		_ = l.ch.Close()
		<-l.loopDone
		l.drainBacklog()
		l.t.release()
	})
	return nil
}

func (l *Listener) drainBacklog() {
	for {
		select {
		case c := <-l.backlog:
			c.abort()
		default:
			return
		}
	}
}

func (l *Listener) acceptLoop(deliveries <-chan amqp.Delivery) {
	defer close(l.loopDone)
	for d := range deliveries {
		h, payload, err := parseMessage(d.Body)
		if err != nil || h.kind != kindConnect || len(payload) != tokenLen || d.ReplyTo == "" {
			l.rejected.Add(1)
			_ = d.Reject(false)
			continue
		}
		var peer token
		copy(peer[:], payload)
		c, err := l.accept(d.ReplyTo, peer, h.limit)
		if err != nil {
			// Our side could not open its end: let another listener try.
			_ = d.Nack(false, true)
			continue
		}
		if l.cfg.OnAccept != nil {
			l.cfg.OnAccept(c)
		}
		select {
		case l.backlog <- c:
			_ = d.Ack(false)
		case <-l.done:
			_ = d.Ack(false)
			c.abort()
		}
	}
}

// accept opens this end of a stream and answers the dialer with its queue
// and token.
func (l *Listener) accept(dialerQueue string, peer token, limit uint64) (*Conn, error) {
	l.t.retain() // the stream's own reference
	ep, err := openEndpoint(l.cfg, l.t.conn)
	if err != nil {
		l.t.release()
		return nil, err
	}
	my := newToken()
	c := newConn(l.cfg, l.t, ep.ch, Addr{Queue: ep.queue}, Addr{Queue: dialerQueue}, my, peer, limit)
	c.service = l.queue
	c.mu.Lock()
	msg := c.message(nil, kindAccept, 0, my[:])
	c.mu.Unlock()
	err = ep.ch.PublishWithContext(context.Background(), "", dialerQueue, true, false, amqp.Publishing{ReplyTo: ep.queue, Body: msg})
	if err != nil {
		_ = ep.ch.Close()
		l.t.release()
		return nil, &brokerError{err}
	}
	c.start(ep.deliveries, ep.returns, ep.confirms, ep.closes)
	return c, nil
}

// abort resets the stream at once.
func (c *Conn) abort() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.fail(ErrReset, true)
}
