package l4zmtp

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// parked is a worker connection whose greeting has been read, waiting for a
// client of the same mechanism. It is handed to exactly one client.
type parked struct {
	conn      net.Conn
	greeting  []byte // the worker's 64 bytes
	mechanism string
	taken     chan struct{} // closed when a client takes it
	released  chan struct{} // closed when the parked watcher no longer reads the conn
	done      chan struct{} // closed when the pair's session has ended
}

// pool holds parked workers by mechanism, oldest first.
type pool struct {
	name   string
	mu     sync.Mutex
	byMech map[string][]*parked
	wake   chan struct{} // closed and replaced whenever a worker parks
}

func (*pool) Destruct() error { return nil }

var pools = caddy.NewUsagePool()

func acquirePool(name string) *pool {
	v, _, _ := pools.LoadOrNew("prelude.zmtp.pool/"+name, func() (caddy.Destructor, error) {
		return &pool{name: name, byMech: map[string][]*parked{}, wake: make(chan struct{})}, nil
	})
	return v.(*pool)
}

func releasePool(name string) { _, _ = pools.Delete("prelude.zmtp.pool/" + name) }

// park adds a worker and wakes waiting clients.
func (p *pool) park(w *parked) {
	p.mu.Lock()
	p.byMech[w.mechanism] = append(p.byMech[w.mechanism], w)
	close(p.wake)
	p.wake = make(chan struct{})
	p.mu.Unlock()
}

// remove drops a parked worker that went away; it reports false if a client
// took it first.
func (p *pool) remove(w *parked) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.byMech[w.mechanism]
	for i, x := range list {
		if x == w {
			p.byMech[w.mechanism] = append(list[:i:i], list[i+1:]...)
			return true
		}
	}
	return false
}

var errNoWorker = errors.New("no idle worker")

// take returns the oldest parked worker of mechanism, waiting until ctx ends.
func (p *pool) take(ctx context.Context, mechanism string) (*parked, error) {
	for {
		p.mu.Lock()
		if list := p.byMech[mechanism]; len(list) > 0 {
			w := list[0]
			p.byMech[mechanism] = list[1:]
			p.mu.Unlock()
			close(w.taken)
			return w, nil
		}
		wake := p.wake
		p.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return nil, errNoWorker
		}
	}
}

// counts returns the parked workers per mechanism.
func (p *pool) counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for m, l := range p.byMech {
		out[m] = len(l)
	}
	return out
}

// waitTakenOrGone blocks until a client takes w or the worker closes its
// connection (its own handshake timer, a crash). A parked libzmq worker
// sends nothing until it has the rest of our greeting, so any read result
// means it is gone. It closes w.released once its watcher has stopped
// reading: the client must wait for that before using the connection, or
// the watcher could swallow the worker's first byte.
func waitTakenOrGone(w *parked) bool {
	defer close(w.released)
	gone := make(chan struct{})
	go func() {
		var b [1]byte
		_, _ = w.conn.Read(b[:])
		close(gone)
	}()
	select {
	case <-w.taken:
		_ = w.conn.SetReadDeadline(time.Now()) // stop the watcher
		<-gone
		_ = w.conn.SetReadDeadline(time.Time{})
		return true
	case <-gone:
		return false
	}
}
