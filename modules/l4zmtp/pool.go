package l4zmtp

import (
	"context"
	"errors"
	"hash/fnv"
	"net"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// parked is a worker connection whose greeting has been read, waiting for a
// client of the same mechanism. It is handed to exactly one client.
type parked struct {
	conn      net.Conn
	host      string // the worker's IP: the unit sticky pairing sticks to
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
	wake   chan struct{}        // closed and replaced whenever a worker parks or a pair ends
	busy   map[string]int       // pairs per worker host
	seen   map[string]time.Time // when each worker host last parked or ended a pair
}

// stickyGrace is how long a worker host with no parked or busy connection
// still counts as present for sticky clients: a libzmq worker reconnects
// within its reconnect interval after each pair.
const stickyGrace = time.Second

func (*pool) Destruct() error { return nil }

var pools = caddy.NewUsagePool()

func acquirePool(name string) *pool {
	v, _, _ := pools.LoadOrNew("prelude.zmtp.pool/"+name, func() (caddy.Destructor, error) {
		return &pool{name: name, byMech: map[string][]*parked{}, wake: make(chan struct{}),
			busy: map[string]int{}, seen: map[string]time.Time{}}, nil
	})
	return v.(*pool)
}

func releasePool(name string) { _, _ = pools.Delete("prelude.zmtp.pool/" + name) }

// park adds a worker and wakes waiting clients.
func (p *pool) park(w *parked) {
	p.mu.Lock()
	p.byMech[w.mechanism] = append(p.byMech[w.mechanism], w)
	p.seen[w.host] = time.Now()
	p.wakeLocked()
	p.mu.Unlock()
}

func (p *pool) wakeLocked() {
	close(p.wake)
	p.wake = make(chan struct{})
}

// release ends a pair taken from the pool.
func (p *pool) release(w *parked) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.busy[w.host]--; p.busy[w.host] <= 0 {
		delete(p.busy, w.host)
	}
	p.seen[w.host] = time.Now()
	p.wakeLocked()
}

// remove drops a parked worker that went away; it reports false if a client
// took it first.
func (p *pool) remove(w *parked) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	list := p.byMech[w.mechanism]
	for i, x := range list {
		if x == w {
			p.setParked(w.mechanism, append(list[:i:i], list[i+1:]...))
			return true
		}
	}
	return false
}

// setParked stores the parked workers of a mechanism. Mechanism names come
// from the workers' greetings: a name other than the spec's three (NULL,
// PLAIN, CURVE; ZMTP 3.1) is forgotten when nobody is parked under it, so
// that made-up names cannot pile up, while the three stay listed (and
// exported) at 0. p.mu is held.
func (p *pool) setParked(mechanism string, list []*parked) {
	if len(list) == 0 && !standardMechanism(mechanism) {
		delete(p.byMech, mechanism)
		return
	}
	p.byMech[mechanism] = list
}

func standardMechanism(m string) bool { return m == "NULL" || m == "PLAIN" || m == "CURVE" }

var errNoWorker = errors.New("no idle worker")

// take returns a parked worker of mechanism, waiting until ctx ends. With
// no key it is the oldest. With a sticky key it is one from the worker host
// that ranks first for the key among the hosts present (parked, paired, or
// seen within stickyGrace) — rendezvous hashing, so a key keeps its host
// while the host is there and the next hosts in its ranking are its
// fallbacks; while the first host is present but has no idle connection,
// the client waits for it.
func (p *pool) take(ctx context.Context, mechanism, key string) (*parked, error) {
	for {
		p.mu.Lock()
		if i := p.pickLocked(mechanism, key); i >= 0 {
			list := p.byMech[mechanism]
			w := list[i]
			p.setParked(mechanism, append(list[:i:i], list[i+1:]...))
			p.busy[w.host]++
			p.mu.Unlock()
			close(w.taken)
			return w, nil
		}
		wake := p.wake
		p.mu.Unlock()
		timer := time.NewTimer(stickyGrace) // a host's grace may run out
		select {
		case <-wake:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return nil, errNoWorker
		}
		timer.Stop()
	}
}

// pickLocked returns the index of the parked worker to take, or -1 to wait.
func (p *pool) pickLocked(mechanism, key string) int {
	list := p.byMech[mechanism]
	if len(list) == 0 {
		return -1
	}
	if key == "" {
		return 0
	}
	best, bestWeight := "", uint64(0)
	now := time.Now()
	consider := func(host string) {
		if w := rendezvous(key, host); best == "" || w > bestWeight {
			best, bestWeight = host, w
		}
	}
	for _, w := range list {
		consider(w.host)
	}
	for host := range p.busy {
		consider(host)
	}
	for host, at := range p.seen {
		if now.Sub(at) < stickyGrace {
			consider(host)
		} else if p.busy[host] == 0 {
			delete(p.seen, host) // gone: keep the table to present hosts
		}
	}
	for i, w := range list {
		if w.host == best {
			return i
		}
	}
	return -1 // the key's host is present but busy or reconnecting: wait for it
}

// rendezvous is the weight of host for key (highest random weight hashing).
func rendezvous(key, host string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(host))
	return h.Sum64()
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
