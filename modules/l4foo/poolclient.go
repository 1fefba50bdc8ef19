package l4foo

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/relay"
)

// pooledClient is one client whose requests ride a shared server
// connection. Its answers are queued to a writer of its own, so that the
// shared connection's reader never waits for it. The stats see the
// client's bytes and its answers as without a pool.
type pooledClient struct {
	h      *Handler
	cx     *layer4.Connection
	server *fooServer
	stats  *foo.Conn

	outstanding int           // requests on the server; under server.mu
	settled     chan struct{} // signalled when outstanding falls to 0

	mu      sync.Mutex // guards answers, out, done, cut
	answers *foo.Stream
	out     []byte
	done    bool
	cut     bool
	kick    chan struct{}
	wrote   chan struct{}
}

// handlePooled serves a client over the member's shared connections.
func (h *Handler) handlePooled(cx *layer4.Connection, ctx context.Context) error {
	var server *fooServer
	lease, err := h.DialShared(ctx, cx.RemoteAddr(), func(ctx context.Context, m *farm.Member, connect farm.ConnectFunc) (net.Conn, error) {
		s, err := fooPoolFor(m.Addr).pick(ctx, *h.Pool, connect, h.logger)
		server = s
		return nil, err
	})
	if err != nil {
		return err
	}
	defer lease.Release()
	defer relay.Track()()
	stats := h.set.Stats.Open()
	defer stats.Close()
	c := &pooledClient{h: h, cx: cx, server: server, stats: stats, settled: make(chan struct{}, 1),
		answers: stats.Stream(foo.FromServer, h.MaxLine), kick: make(chan struct{}, 1), wrote: make(chan struct{})}
	go c.writeLoop()
	err = c.readLoop()
	c.awaitAnswers()
	server.forget(c)
	c.finish()
	h.logger.Debug("foo pooled connection ended", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", lease.Member.Addr), zap.Error(err))
	return nil
}

// readLoop reads the client's lines: each REQ goes to the shared server
// connection with a Seq of that connection; other lines are not for a
// server and are dropped. A final line without LF counts.
func (c *pooledClient) readLoop() error {
	src := c.cx.Conn
	rd := relay.NewReader(src, relay.Prefetched(c.cx))
	defer rd.Release()
	st := c.stats.Stream(foo.FromClient, c.h.MaxLine)
	idle := time.Duration(c.h.IdleTimeout)
	var partial, batch []byte
	for {
		if idle > 0 {
			_ = src.SetReadDeadline(time.Now().Add(idle))
		}
		b, rerr := rd.Read(readBuffers)
		if len(b) > 0 {
			if err := st.ObserveAt(b, time.Now()); err != nil {
				c.h.set.Stats.Invalid()
				return err // a line over max_line
			}
			var err error
			partial, batch, err = c.lines(append(partial, b...), batch[:0])
			if err == nil && len(batch) > 0 {
				err = c.server.write(batch)
			}
			if err != nil {
				return err
			}
		}
		switch {
		case rerr == nil:
		case rerr == io.EOF:
			st.End()
			if len(partial) > 0 {
				batch, err := c.line(partial, batch[:0])
				if err == nil && len(batch) > 0 {
					err = c.server.write(batch)
				}
				return err
			}
			return nil
		default:
			return rerr
		}
	}
}

// lines handles the complete lines in b and returns what is left of the
// last, unfinished one.
func (c *pooledClient) lines(b, batch []byte) (rest, out []byte, err error) {
	for {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return append(b[:0:0], b...), batch, nil
		}
		if batch, err = c.line(b[:i], batch); err != nil {
			return nil, batch, err
		}
		b = b[i+1:]
	}
}

// line remaps one REQ into batch; a REQ the pool cannot take is answered
// by the proxy.
func (c *pooledClient) line(line, batch []byte) ([]byte, error) {
	m, err := foo.ParseLine(line)
	if err != nil || m.Type != foo.REQ {
		return batch, nil
	}
	out, err := c.server.request(c, m, batch)
	switch {
	case errors.Is(err, foo.ErrRemapFull):
		c.nak([]uint64{m.Seq}, "proxy: pool busy")
		return batch, nil
	case err != nil:
		c.nak([]uint64{m.Seq}, "proxy: "+err.Error())
		return batch, err
	}
	return out, nil
}

// awaitAnswers waits, after the client stopped sending, for the answers
// to its outstanding requests, for at most idle_timeout; what is left then
// gets the proxy's NAK.
func (c *pooledClient) awaitAnswers() {
	c.server.mu.Lock()
	n := c.outstanding
	c.server.mu.Unlock()
	if n == 0 {
		return
	}
	wait := time.Duration(c.h.IdleTimeout)
	if wait <= 0 {
		wait = DefaultIdleTimeout
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-c.settled:
			c.server.mu.Lock()
			n = c.outstanding
			c.server.mu.Unlock()
			if n == 0 {
				return
			}
		case <-timer.C:
			c.server.mu.Lock()
			var seqs []uint64
			c.server.remap.Drain(func(pc *pooledClient, seq uint64) {
				if pc == c {
					seqs = append(seqs, seq)
				}
			})
			c.outstanding = 0
			c.server.mu.Unlock()
			c.nak(seqs, "proxy: no answer within "+wait.String())
			return
		}
	}
}

func (c *pooledClient) signalSettled() {
	select {
	case c.settled <- struct{}{}:
	default:
	}
}

// deliver queues an answer for the client, counted by the stats as the
// client receives it.
func (c *pooledClient) deliver(line []byte) {
	c.mu.Lock()
	if c.done || c.cut {
		c.mu.Unlock()
		return
	}
	_ = c.answers.Observe(line)
	c.out = append(c.out, line...)
	over := len(c.out) > poolClientBacklog
	if over {
		c.cut, c.out = true, nil
	}
	c.mu.Unlock()
	if over {
		_ = c.cx.Conn.Close() // too far behind: the shared reader does not wait
		return
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// nak answers requests on the proxy's own account.
func (c *pooledClient) nak(seqs []uint64, reason string) {
	for _, seq := range seqs {
		c.deliver(poolNAK(seq, reason))
	}
	c.h.set.Stats.ProxyNAKs(len(seqs))
}

func (c *pooledClient) writeLoop() {
	defer close(c.wrote)
	for range c.kick {
		c.mu.Lock()
		b, done := c.out, c.done
		c.out = nil
		c.mu.Unlock()
		if len(b) > 0 {
			if _, err := c.cx.Conn.Write(b); err != nil {
				c.mu.Lock()
				c.cut = true
				c.mu.Unlock()
				return
			}
		}
		if done {
			return
		}
	}
}

// finish lets the writer send what is queued, for at most a second, and
// closes the client.
func (c *pooledClient) finish() {
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
	_ = c.cx.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	select {
	case <-c.wrote:
	case <-time.After(2 * time.Second):
	}
	_ = c.cx.Conn.Close()
}
