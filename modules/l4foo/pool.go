package l4foo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/modules/farm"
)

// PoolOptions multiplex the handler's clients over a bounded set of server
// connections per member: each client's REQ gets a Seq of the shared
// connection, and each ACK or NAK goes back to the client that asked, with
// the client's own Seq.
type PoolOptions struct {
	// Server connections per member. Default 4.
	MaxConnections int `json:"max_connections,omitempty"`
	// Requests outstanding on one server connection, at most; a REQ beyond
	// gets "NAK <seq> proxy: pool busy" at once. Default 65536.
	MaxOutstanding int `json:"max_outstanding,omitempty"`
}

// Pool defaults.
const (
	DefaultPoolConnections = 4
	// What the server has answered a client that the client has not read,
	// at most: a client further behind is disconnected, so that the
	// shared connection's reader never waits for one client.
	poolClientBacklog = 1 << 20
)

func (o *PoolOptions) provision() error {
	if o == nil {
		return nil
	}
	if o.MaxConnections < 0 || o.MaxOutstanding < 0 {
		return errors.New("pool: max_connections and max_outstanding must not be negative")
	}
	if o.MaxConnections == 0 {
		o.MaxConnections = DefaultPoolConnections
	}
	if o.MaxOutstanding == 0 {
		o.MaxOutstanding = foo.DefaultRemapMax
	}
	return nil
}

// fooPool is the shared server connections to one member. Pools outlive
// configs: a reload keeps them and the clients on them.
type fooPool struct {
	addr  string
	mu    sync.Mutex
	conns []*fooServer
	next  int
}

var (
	fooPoolsMu sync.Mutex
	fooPools   = map[string]*fooPool{}
)

func fooPoolFor(addr string) *fooPool {
	fooPoolsMu.Lock()
	defer fooPoolsMu.Unlock()
	p := fooPools[addr]
	if p == nil {
		p = &fooPool{addr: addr}
		fooPools[addr] = p
	}
	return p
}

// pick returns a live connection, opening one (outside the lock) while
// there are fewer than max; past that the connections take clients in
// turn.
func (p *fooPool) pick(ctx context.Context, opts PoolOptions, connect farm.ConnectFunc, logger *zap.Logger) (*fooServer, error) {
	p.mu.Lock()
	if len(p.conns) >= opts.MaxConnections {
		s := p.conns[p.next%len(p.conns)]
		p.next++
		p.mu.Unlock()
		return s, s.waitReady(ctx)
	}
	s := &fooServer{pool: p, remap: foo.Remap[*pooledClient]{Max: opts.MaxOutstanding}, logger: logger,
		ready: make(chan struct{})}
	p.conns = append(p.conns, s)
	p.mu.Unlock()
	conn, err := connect(ctx)
	s.conn, s.err = conn, err
	close(s.ready)
	if err != nil {
		p.remove(s)
		return nil, err
	}
	go s.read()
	return s, nil
}

// waitReady waits for the dial of a connection another client opened.
func (s *fooServer) waitReady(ctx context.Context) error {
	select {
	case <-s.ready:
		return s.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *fooPool) remove(s *fooServer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, x := range p.conns {
		if x == s {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			return
		}
	}
}

// fooServer is one shared server connection.
type fooServer struct {
	pool   *fooPool
	logger *zap.Logger
	ready  chan struct{} // closed once conn or err is set
	conn   net.Conn
	err    error

	wmu sync.Mutex // writes to the server

	mu    sync.Mutex
	remap foo.Remap[*pooledClient]
	dead  bool
}

// request remaps a client's REQ; the caller writes the line it returns.
func (s *fooServer) request(c *pooledClient, m foo.Msg, dst []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return dst, errServerLost
	}
	seq, err := s.remap.Request(c, m.Seq)
	if err != nil {
		return dst, err
	}
	c.outstanding++
	return foo.AppendLine(dst, m, seq), nil
}

var errServerLost = errors.New("the shared server connection was lost")

func (s *fooServer) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.conn.Write(b)
	return err
}

// read hands each answer to the client that asked, with its own Seq, until
// the connection ends; then every request still outstanding gets the
// proxy's NAK.
func (s *fooServer) read() {
	r := bufio.NewReaderSize(s.conn, 32<<10)
	var line []byte
	for {
		var err error
		line, err = readLine(r, line[:0], DefaultMaxLine)
		if len(line) > 0 {
			s.answer(bytes.TrimSuffix(line, []byte{'\n'}))
		}
		if err != nil {
			break
		}
	}
	s.mu.Lock()
	s.dead = true
	lost := map[*pooledClient][]uint64{}
	s.remap.Drain(func(c *pooledClient, seq uint64) { lost[c] = append(lost[c], seq) })
	for c := range lost {
		c.outstanding = 0
	}
	s.mu.Unlock()
	s.pool.remove(s)
	_ = s.conn.Close()
	for c, seqs := range lost {
		c.nak(seqs, "proxy: the shared server connection was lost")
		c.signalSettled()
	}
}

// answer routes one line from the server.
func (s *fooServer) answer(line []byte) {
	m, err := foo.ParseLine(line)
	if err != nil || m.Type == foo.REQ {
		s.logger.Debug("foo pool: a server line that answers no request", zap.String("upstream", s.pool.addr))
		return
	}
	s.mu.Lock()
	c, seq, ok := s.remap.Answer(m.Seq)
	if ok {
		c.outstanding--
		if c.outstanding == 0 {
			c.signalSettled()
		}
	}
	s.mu.Unlock()
	if !ok {
		return // its client left
	}
	c.deliver(foo.AppendLine(nil, m, seq))
}

// readLine appends the next line (LF included) to buf, at most max bytes
// plus the LF; a longer line is cut there.
func readLine(r *bufio.Reader, buf []byte, max int) ([]byte, error) {
	for {
		b, err := r.ReadSlice('\n')
		if len(buf)+len(b) > max+1 {
			b = b[:max+1-len(buf)]
		}
		buf = append(buf, b...)
		if err != bufio.ErrBufferFull {
			return buf, err
		}
	}
}

// forget drops a leaving client's outstanding requests.
func (s *fooServer) forget(c *pooledClient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remap.Forget(c)
}

// PoolStatus is one member's shared server connections.
type PoolStatus struct {
	Upstream    string `json:"upstream"`
	Connections int    `json:"connections"`
	Outstanding int    `json:"outstanding"`
}

// Pools lists the Foo pools.
func Pools() []PoolStatus {
	fooPoolsMu.Lock()
	all := make([]*fooPool, 0, len(fooPools))
	for _, p := range fooPools {
		all = append(all, p)
	}
	fooPoolsMu.Unlock()
	out := make([]PoolStatus, 0, len(all))
	for _, p := range all {
		p.mu.Lock()
		st := PoolStatus{Upstream: p.addr, Connections: len(p.conns)}
		for _, s := range p.conns {
			s.mu.Lock()
			st.Outstanding += s.remap.Outstanding()
			s.mu.Unlock()
		}
		p.mu.Unlock()
		out = append(out, st)
	}
	return out
}

// poolNAK is the proxy's answer to a request it could not send.
func poolNAK(seq uint64, reason string) []byte {
	return fmt.Appendf(nil, "NAK %d %s\n", seq, reason)
}
