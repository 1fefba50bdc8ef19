package bench

import (
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp/stream"
)

// The reference design, as shared/reference/amqp-stream.md describes it, for
// the benchmark's comparison only: an exclusive control queue; Dial sends
// an empty message with Reply-To; Accept answers with its own queue; every
// Write is one mandatory, transient message with no confirm; the reader
// consumes with auto-ack and buffers whatever arrives. It has none of the
// reliability of amqp/stream, which is the point of the comparison.

type refConn struct {
	ch         *amqp091.Channel
	peer       string
	deliveries <-chan amqp091.Delivery
	mu         sync.Mutex
	pending    []byte
}

func (c *refConn) Write(b []byte) (int, error) {
	body := append([]byte(nil), b...)
	if err := c.ch.Publish("", c.peer, true, false, amqp091.Publishing{Body: body}); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (c *refConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.pending) == 0 {
		d, ok := <-c.deliveries
		if !ok {
			return 0, net.ErrClosed
		}
		c.pending = d.Body
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

func (c *refConn) Close() error                     { return c.ch.Close() }
func (c *refConn) LocalAddr() net.Addr              { return stream.Addr{} }
func (c *refConn) RemoteAddr() net.Addr             { return stream.Addr{Queue: c.peer} }
func (c *refConn) SetDeadline(time.Time) error      { return nil }
func (c *refConn) SetReadDeadline(time.Time) error  { return nil }
func (c *refConn) SetWriteDeadline(time.Time) error { return nil }

// refEnd opens a channel with a server-named queue consumed with auto-ack.
func refEnd(conn *amqp091.Connection) (*amqp091.Channel, string, <-chan amqp091.Delivery, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, "", nil, err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return nil, "", nil, err
	}
	d, err := ch.Consume(q.Name, "", true, true, false, false, nil)
	return ch, q.Name, d, err
}

func refDial(conn *amqp091.Connection, queue string) (net.Conn, error) {
	ch, name, d, err := refEnd(conn)
	if err != nil {
		return nil, err
	}
	if err := ch.Publish("", queue, true, false, amqp091.Publishing{ReplyTo: name}); err != nil {
		return nil, err
	}
	select {
	case m := <-d:
		return &refConn{ch: ch, peer: m.ReplyTo, deliveries: d}, nil
	case <-time.After(10 * time.Second):
		return nil, errors.New("reference dial: no answer")
	}
}

type refListener struct {
	conn  *amqp091.Connection
	ch    *amqp091.Channel
	conns chan net.Conn
}

func refListen(b *testing.B, conn *amqp091.Connection, queue string) *refListener {
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, true, true, false, nil); err != nil {
		b.Fatal(err)
	}
	d, err := ch.Consume(queue, "", true, true, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	l := &refListener{conn: conn, ch: ch, conns: make(chan net.Conn)}
	b.Cleanup(func() { _ = ch.Close() })
	go func() {
		for m := range d {
			sch, name, sd, err := refEnd(conn)
			if err != nil {
				continue
			}
			_ = sch.Publish("", m.ReplyTo, true, false, amqp091.Publishing{ReplyTo: name})
			l.conns <- &refConn{ch: sch, peer: m.ReplyTo, deliveries: sd}
		}
		close(l.conns)
	}()
	return l
}

func (l *refListener) Accept() (net.Conn, error) {
	c, ok := <-l.conns
	if !ok {
		return nil, net.ErrClosed
	}
	return c, nil
}
func (l *refListener) Close() error   { return l.ch.Close() }
func (l *refListener) Addr() net.Addr { return stream.Addr{} }
