package stream

import (
	"sync"

	amqp "github.com/rabbitmq/amqp091-go"
)

// transport is the state this package keeps per AMQP connection: whether the
// broker has blocked publishing (connection.blocked), when the connection
// closed, and how many streams and listeners use it. A connection this
// package opened itself (owned) is closed when its last user is done.
type transport struct {
	conn  *amqp.Connection
	owned bool

	mu        sync.Mutex
	refs      int
	blocked   bool
	unblocked chan struct{} // closed when a block is lifted
	closed    chan struct{} // closed when the connection closes
	closeErr  error
}

var (
	transportsMu sync.Mutex
	transports   = map[*amqp.Connection]*transport{}
)

// acquire returns conn's transport with one more reference, creating it on
// first use.
func acquire(conn *amqp.Connection, owned bool) *transport {
	transportsMu.Lock()
	defer transportsMu.Unlock()
	t := transports[conn]
	if t == nil {
		t = &transport{conn: conn, owned: owned, unblocked: make(chan struct{}), closed: make(chan struct{})}
		close(t.unblocked)
		transports[conn] = t
		go t.watch(conn.NotifyBlocked(make(chan amqp.Blocking, 1)), conn.NotifyClose(make(chan *amqp.Error, 1)))
	}
	t.refs++
	return t
}

// retain adds a reference.
func (t *transport) retain() {
	transportsMu.Lock()
	t.refs++
	transportsMu.Unlock()
}

// release drops one reference; the last one closes an owned connection.
func (t *transport) release() {
	transportsMu.Lock()
	t.refs--
	last := t.refs == 0
	if last && transports[t.conn] == t {
		delete(transports, t.conn)
	}
	transportsMu.Unlock()
	if last && t.owned {
		_ = t.conn.Close()
	}
}

func (t *transport) watch(blocking chan amqp.Blocking, closing chan *amqp.Error) {
	for {
		select {
		case b, ok := <-blocking:
			if !ok {
				blocking = nil
				continue
			}
			t.setBlocked(b.Active)
		case err, ok := <-closing:
			t.mu.Lock()
			if ok && err != nil {
				t.closeErr = err
			} else {
				t.closeErr = amqp.ErrClosed
			}
			close(t.closed)
			t.mu.Unlock()
			transportsMu.Lock()
			if transports[t.conn] == t {
				delete(transports, t.conn)
			}
			transportsMu.Unlock()
			return
		}
	}
}

func (t *transport) setBlocked(active bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if active == t.blocked {
		return
	}
	t.blocked = active
	if active {
		t.unblocked = make(chan struct{})
	} else {
		close(t.unblocked)
	}
}

// publishable returns nil when publishing may proceed, or a channel closed
// when the broker lifts its block.
func (t *transport) publishable() chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.blocked {
		return t.unblocked
	}
	return nil
}

func (t *transport) err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closeErr
}
