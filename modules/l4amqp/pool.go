package l4amqp

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/farm"
)

// PoolOptions turn on upstream connection pooling for a vhost block: its
// clients share a few broker connections, each client's channels mapped
// onto channels of one of them.
type PoolOptions struct {
	// Channels one broker connection carries for its clients (a client
	// with no channel open holds one). Default and ceiling: the broker's
	// channel_max.
	MaxChannelsPerConnection int `json:"max_channels_per_connection,omitempty"`
	// A broker connection without clients for this long is closed.
	// Default 5m.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// Connections a pool keeps open however long they are idle. Default 0.
	MinIdle int `json:"min_idle,omitempty"`
	// Broker connections one pool (member, vhost, user, credentials) may
	// open. Default 0: no limit.
	MaxConnections int `json:"max_connections,omitempty"`
	// The largest message body a client may publish: the proxy holds each
	// message until it is whole, so that no client leaves half a message
	// on a shared connection. Default 4 MiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`
	// What the broker has sent a client that the client has not read yet,
	// at most: a client that falls further behind is disconnected (its
	// unacknowledged messages go back to their queues). Default 16 MiB.
	MaxClientBacklog int64 `json:"max_client_backlog,omitempty"`
	// Keep a broker channel a client used only to publish with confirms
	// (all confirmed) for the next client, instead of closing it and
	// opening another: that client's channel.open and confirm.select are
	// answered by the proxy. Default off.
	ReuseChannels bool `json:"reuse_channels,omitempty"`
}

// Pool defaults.
const (
	DefaultPoolIdleTimeout      = 5 * time.Minute
	DefaultPoolMaxMessageSize   = 4 << 20
	DefaultPoolMaxClientBacklog = 16 << 20
)

func (o *PoolOptions) provision() error {
	if o == nil {
		return nil
	}
	switch {
	case o.MaxChannelsPerConnection < 0 || o.MaxChannelsPerConnection > 65535:
		return fmt.Errorf("max_channels_per_connection: %d is not within 1-65535", o.MaxChannelsPerConnection)
	case o.MinIdle < 0:
		return fmt.Errorf("min_idle: %d is negative", o.MinIdle)
	case o.MaxConnections < 0:
		return fmt.Errorf("max_connections: %d is negative", o.MaxConnections)
	case o.MaxConnections > 0 && o.MinIdle > o.MaxConnections:
		return fmt.Errorf("min_idle %d is above max_connections %d", o.MinIdle, o.MaxConnections)
	case o.MaxMessageSize < 0 || o.MaxClientBacklog < 0:
		return fmt.Errorf("max_message_size and max_client_backlog must not be negative")
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = caddy.Duration(DefaultPoolIdleTimeout)
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = DefaultPoolMaxMessageSize
	}
	if o.MaxClientBacklog == 0 {
		o.MaxClientBacklog = DefaultPoolMaxClientBacklog
	}
	return nil
}

// poolKey names a pool. Credentials are not in it: each connection of the
// pool keeps the digest of those that opened it.
type poolKey struct {
	member, vhost, user string
}

// pool is the broker connections of one member, vhost and user. Pools live
// outside any config: a reload keeps them and their clients.
type pool struct {
	key   poolKey
	route string      // the vhost block's label (its pattern), for metrics; under mu
	opts  PoolOptions // of the config that last used the pool; under mu

	mu     sync.Mutex
	conns  []*upConn
	serial int // numbers connections for their names

	saved    uint64 // clients that found a connection open: handshakes saved
	refusals map[string]uint64
}

var (
	poolsMu sync.Mutex
	pools   = map[poolKey]*pool{}
)

func poolFor(key poolKey, route string, opts PoolOptions) *pool {
	poolsMu.Lock()
	defer poolsMu.Unlock()
	p := pools[key]
	if p == nil {
		p = &pool{key: key, refusals: map[string]uint64{}}
		pools[key] = p
	}
	p.mu.Lock()
	p.opts, p.route = opts, route
	p.mu.Unlock()
	return p
}

// credentialDigest is what a pool compares credentials by: a SHA-256 of
// the mechanism and the SASL response, never kept in the clear.
func credentialDigest(so *amqp.StartOk) [32]byte {
	h := sha256.New()
	h.Write([]byte(so.Mechanism))
	h.Write([]byte{0})
	h.Write(so.Response)
	var d [32]byte
	h.Sum(d[:0])
	return d
}

// errPoolFull refuses a client when the pool is at max_connections with
// every channel of every connection in use.
type errPoolFull struct{ conns, channels int }

// acquire finds the client a connection of the pool with a channel to
// spare and the client's own credentials, joins a connection being opened
// for such clients, or opens one with connect, outside the pool's lock.
// The handshake of a new connection is the client's: the broker checks its
// credentials and vhost before the client is told it is in.
func (p *pool) acquire(ctx context.Context, s *session, m *farm.Member, connect farm.ConnectFunc) (*upConn, error) {
	digest := credentialDigest(s.startOk)
	p.mu.Lock()
	for _, c := range p.conns {
		if subtle.ConstantTimeCompare(c.digest[:], digest[:]) == 1 && c.reserveClient() {
			p.saved++
			route := p.route
			p.mu.Unlock()
			poolMetricsSaved(route)
			return c, c.waitOpen(ctx)
		}
	}
	if max := p.opts.MaxConnections; max > 0 && len(p.conns) >= max {
		p.refusals["max_connections"]++
		poolMetricsRefusal(p.route, "max_connections")
		channels := 0
		for _, c := range p.conns {
			channels += c.capacity()
		}
		p.mu.Unlock()
		return nil, farm.Final(closeWith(outcomeLimited, amqp.ReplyNotAllowed,
			"NOT_ALLOWED - the pool for vhost %s, user %s at %s is at max_connections %d with all %d channels in use",
			p.key.vhost, p.key.user, p.key.member, max, channels))
	}
	p.serial++
	c := newUpConn(p, p.serial, digest, m.Addr)
	c.reserveClient()
	p.conns = append(p.conns, c)
	p.mu.Unlock()

	err := c.open(ctx, s, connect)
	if err != nil {
		p.remove(c)
	}
	return c, err
}

// remove forgets a connection that failed or closed.
func (p *pool) remove(c *upConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.conns {
		if x == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			return
		}
	}
}

// refuse counts a client the pool turned away, by reason.
func (p *pool) refuse(reason string) {
	p.mu.Lock()
	p.refusals[reason]++
	route := p.route
	p.mu.Unlock()
	poolMetricsRefusal(route, reason)
}

// reapIdle closes connections without clients for idle_timeout, keeping
// min_idle of them.
func (p *pool) reapIdle(now time.Time) {
	p.mu.Lock()
	keep := p.opts.MinIdle
	idle := time.Duration(p.opts.IdleTimeout)
	var victims []*upConn
	open := len(p.conns)
	for _, c := range p.conns {
		if open <= keep {
			break
		}
		if c.idleFor(now) >= idle {
			victims = append(victims, c)
			open--
		}
	}
	p.mu.Unlock()
	for _, c := range victims {
		if c.retire() {
			p.remove(c)
		}
	}
}

// reapPools runs reapIdle on every pool every few seconds, and forgets
// pools left without connections.
func reapPools(stop <-chan struct{}) {
	t := time.NewTicker(poolReapInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			poolsMu.Lock()
			all := make([]*pool, 0, len(pools))
			for _, p := range pools {
				all = append(all, p)
			}
			poolsMu.Unlock()
			for _, p := range all {
				p.reapIdle(now)
			}
			poolsMu.Lock()
			for k, p := range pools {
				p.mu.Lock()
				if len(p.conns) == 0 {
					delete(pools, k)
				}
				p.mu.Unlock()
			}
			poolsMu.Unlock()
		}
	}
}

var (
	poolReapInterval = 2 * time.Second
	startReaper      sync.Once
)

// PoolStatus is one pool as GET /prelude/amqp/pools reports it. It never
// holds credentials.
type PoolStatus struct {
	Upstream        string             `json:"upstream"`
	Route           string             `json:"route"` // the vhost block's pattern
	VHost           string             `json:"vhost"`
	User            string             `json:"user"`
	Connections     []PoolConnStatus   `json:"connections"`
	Clients         int                `json:"clients"`
	ChannelsInUse   int                `json:"channels_in_use"`
	HandshakesSaved uint64             `json:"handshakes_saved"`
	Refusals        map[string]uint64  `json:"refusals"`
	Options         PoolOptionsSummary `json:"options"`
}

// PoolOptionsSummary is the options a pool runs with.
type PoolOptionsSummary struct {
	MaxChannelsPerConnection int    `json:"max_channels_per_connection"`
	IdleTimeout              string `json:"idle_timeout"`
	MinIdle                  int    `json:"min_idle"`
	MaxConnections           int    `json:"max_connections"`
}

// PoolConnStatus is one broker connection of a pool.
type PoolConnStatus struct {
	Name     string    `json:"name"` // the connection_name the broker shows
	Local    string    `json:"local"`
	Opened   time.Time `json:"opened"`
	Clients  int       `json:"clients"`
	Channels int       `json:"channels"` // channels open on the broker
	Capacity int       `json:"capacity"`
	Blocked  string    `json:"blocked,omitempty"` // the broker's Connection.Blocked reason
	State    string    `json:"state"`             // opening, open, closing
	Parked   int       `json:"parked"`            // broker channels kept for reuse
	Reused   uint64    `json:"reused"`            // channels given to clients from those
}

// Pools returns every pool, by upstream, vhost and user.
func Pools() []PoolStatus {
	poolsMu.Lock()
	all := make([]*pool, 0, len(pools))
	for _, p := range pools {
		all = append(all, p)
	}
	poolsMu.Unlock()
	out := make([]PoolStatus, 0, len(all))
	for _, p := range all {
		out = append(out, p.status())
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Upstream != b.Upstream {
			return a.Upstream < b.Upstream
		}
		if a.VHost != b.VHost {
			return a.VHost < b.VHost
		}
		return a.User < b.User
	})
	return out
}

func (p *pool) status() PoolStatus {
	p.mu.Lock()
	conns := append([]*upConn(nil), p.conns...)
	st := PoolStatus{Upstream: p.key.member, Route: p.route, VHost: p.key.vhost, User: p.key.user,
		HandshakesSaved: p.saved, Refusals: map[string]uint64{}, Connections: []PoolConnStatus{},
		Options: PoolOptionsSummary{MaxChannelsPerConnection: p.opts.MaxChannelsPerConnection,
			IdleTimeout: time.Duration(p.opts.IdleTimeout).String(), MinIdle: p.opts.MinIdle, MaxConnections: p.opts.MaxConnections}}
	for k, v := range p.refusals {
		st.Refusals[k] = v
	}
	p.mu.Unlock()
	for _, c := range conns {
		cs := c.status()
		st.Connections = append(st.Connections, cs)
		st.Clients += cs.Clients
		st.ChannelsInUse += cs.Channels
	}
	return st
}

// localString is a connection's local address, or "".
func localString(c net.Conn) string {
	if c == nil {
		return ""
	}
	return c.LocalAddr().String()
}
