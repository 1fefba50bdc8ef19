package l4foo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/internal/readprelude"
	"github.com/caddyprelude/prelude/modules/internal/startlog"
	"github.com/caddyprelude/prelude/modules/internal/tcpinfo"
	"github.com/caddyprelude/prelude/modules/relay"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// DefaultMaxLine is the longest line, LF excluded, before the connection is
// closed.
const DefaultMaxLine = 64 << 10

// DefaultIdleTimeout is how long a proxied connection may pass no byte
// either way before it is closed.
const DefaultIdleTimeout = 5 * time.Minute

// Handler proxies Foo connections to a farm while counting every line in
// both directions: every read is analysed before it is written on.
type Handler struct {
	// The upstream farm (to, lb_policy, dial_timeout, ...).
	farm.Farm
	// The stats set this handler reports to. Default "default".
	StatsName string `json:"stats,omitempty"`
	// Longest line (LF excluded); a longer one is counted invalid and ends
	// the connection. Default 64 KiB.
	MaxLine int `json:"max_line,omitempty"`
	// Recovery file of the stats set. Default: under Caddy's data dir.
	Recovery string `json:"recovery,omitempty"`
	// How long a connection may pass no byte either way. Requests still
	// unanswered then get a NAK from the proxy, and both sides are closed.
	// Default 5m; a negative value disables it.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`
	// Multiplex clients over a bounded set of server connections per
	// member. Off without it.
	Pool *PoolOptions `json:"pool,omitempty"`

	set    *Set
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.foo",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, provisions the farm and joins the stats set.
func (h *Handler) Provision(ctx caddy.Context) error {
	startlog.Listeners(ctx)
	h.logger = ctx.Logger()
	if h.StatsName == "" {
		h.StatsName = "default"
	}
	if h.MaxLine == 0 {
		h.MaxLine = DefaultMaxLine
	}
	if h.MaxLine < 0 {
		return errors.New("max_line: must be positive")
	}
	if h.IdleTimeout == 0 {
		h.IdleTimeout = caddy.Duration(DefaultIdleTimeout)
	}
	if h.Recovery == "" {
		h.Recovery = DefaultRecoveryPath(h.StatsName)
	}
	if err := h.Pool.provision(); err != nil {
		return err
	}
	h.Farm.Name = "foo " + h.StatsName
	if err := h.Farm.Provision(ctx); err != nil {
		return err
	}
	set, err := acquireSet(h.StatsName, h.Recovery, h.logger)
	if err != nil {
		return err
	}
	h.set = set
	set.addFarm(&h.Farm)
	registerMetrics(ctx.GetMetricsRegistry())
	startSignalDump()
	return nil
}

// Cleanup leaves the stats set and releases the farm.
func (h *Handler) Cleanup() error {
	if h.set != nil {
		h.set.removeFarm(&h.Farm)
		releaseSet(h.StatsName)
	}
	return h.Farm.Cleanup()
}

// Handle proxies the connection, scanning lines in both directions.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Duration(h.DialTimeout))
	if repl, ok := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); ok {
		ctx = farm.WithReplacer(ctx, repl) // a lookup's key, placeholders in to
	}
	if h.Pool != nil {
		defer cancel()
		if err := h.handlePooled(cx, ctx); err != nil {
			h.refuse(cx, err)
		}
		return nil
	}
	lease, err := h.Dial(ctx, cx.RemoteAddr(), func(context.Context, *farm.Member, net.Conn) error { return nil })
	cancel()
	if err != nil {
		h.refuse(cx, err)
		return nil
	}
	defer lease.Release()
	defer lease.Conn.Close()
	defer relay.Track()() // a graceful exit waits for this session too
	conn := h.set.Stats.Open()
	defer conn.Close()
	p := &proxied{h: h, client: cx, server: lease.Conn, conn: conn,
		answers: conn.Stream(foo.FromServer, h.MaxLine), idle: time.Duration(h.IdleTimeout)}
	p.last.Store(time.Now().UnixNano())
	errc := make(chan error, 1)
	go func() { errc <- p.pipe(foo.FromClient) }()
	err = p.pipe(foo.FromServer)
	if e := <-errc; err == nil {
		err = e
	}
	if p.aborted.Load() {
		closeAborted(cx.Conn, p.torn)
	}
	h.logger.Debug("foo connection ended", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", lease.Member.Addr), zap.Error(err))
	return nil
}

// refuse answers a client no server was found for with a NAK of its first
// request that says why.
func (h *Handler) refuse(cx *layer4.Connection, err error) {
	var noRoute *farm.NoRouteError
	var refused *farm.RefusedError
	switch {
	case errors.As(err, &noRoute):
		h.nakFirstRequest(cx, "proxy: "+noRoute.Error())
	case errors.As(err, &refused):
		h.nakFirstRequest(cx, "proxy: refused: "+refused.Reason)
	default:
		h.logger.Debug("foo upstream unreachable", zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
		h.nakFirstRequest(cx, "proxy: no upstream reachable")
	}
}

// proxied is a client connection and its server connection.
type proxied struct {
	h       *Handler
	client  *layer4.Connection
	server  net.Conn
	conn    *foo.Conn
	answers *foo.Stream // server to client; with toClient held
	idle    time.Duration

	toClient sync.Mutex   // writes to the client: answers, or the proxy's NAKs
	torn     bool         // with toClient: a write to the client failed, maybe mid-line
	last     atomic.Int64 // when a byte last moved either way, unix ns
	aborted  atomic.Bool  // the proxy ended the connection (abort)
}

// readBufferSize is the size of the buffers reads borrow. 32 KiB measured
// best with many busy connections (16 KiB, 256 KiB and buffers that grow
// and shrink were slower or less steady; BENCHMARKS.md).
const readBufferSize = 32 << 10

var readBuffers = relay.NewBuffers(readBufferSize)

// recordBuffers serve a side read through TLS, which blocks holding its
// buffer: a TLS read returns at most one record, 16 KiB of plaintext, so
// a larger buffer would only be held longer for nothing.
var recordBuffers = relay.NewBuffers(16 << 10)

// errIdle ends a connection that passed no byte for idle_timeout.
var errIdle = errors.New("idle timeout")

// pipe copies one direction, passing every read to the analyser as it
// flows. At the source's EOF a final line without LF is observed too and
// the destination is half-closed. A line over max_line is counted invalid
// and ends the connection; so does idle_timeout without a byte either way.
func (p *proxied) pipe(dir foo.Direction) error {
	var src, dst net.Conn = p.client.Conn, p.server // raw sockets: CloseWrite, no wrapper
	st := p.conn.Stream(foo.FromClient, p.h.MaxLine)
	var first []byte
	if dir == foo.FromServer {
		src, dst, st = p.server, p.client.Conn, p.answers
	} else {
		first = relay.Prefetched(p.client)
	}
	rd := relay.NewReader(src, first)
	defer rd.Release()
	buffers := readBuffers
	if !rd.WaitsUnbuffered() {
		buffers = recordBuffers
	}
	var deadline time.Time
	if p.idle > 0 {
		deadline = time.Now().Add(p.idle)
		_ = src.SetReadDeadline(deadline)
		_ = dst.SetWriteDeadline(deadline)
	}
	for {
		b, rerr := rd.Read(buffers)
		if len(b) > 0 {
			now := time.Now()
			deadline = p.moved(src, dst, deadline, now)
			err := p.forward(dir, st, dst, b, now)
			if errors.Is(err, os.ErrDeadlineExceeded) && p.idle > 0 {
				p.expire() // the other side took nothing for idle_timeout
				return errIdle
			}
			if errors.Is(err, foo.ErrLineTooLong) {
				p.tooLong(dir)
				return err
			}
			if err != nil {
				if !p.aborted.Load() { // else Handle closes the client after the NAKs
					closeBoth(dst, src)
				}
				return err
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, os.ErrDeadlineExceeded) && p.idle > 0 && !p.aborted.Load():
			// Silent this way for idle_timeout; the other way may not be.
			if next := time.Unix(0, p.last.Load()).Add(p.idle); time.Until(next) > 0 {
				deadline = next
				_ = src.SetReadDeadline(next)
				_ = dst.SetWriteDeadline(next) // the old one may have passed
				continue
			}
			p.expire()
			return errIdle
		case rerr == io.EOF:
			st.End()
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			return nil
		default:
			if !p.aborted.Load() {
				closeBoth(dst, src)
			}
			return rerr
		}
	}
}

// moved records that bytes arrived at now and pushes the read deadline of src
// and the write deadline of dst idle_timeout ahead — at most once per half
// of it, as resetting deadlines costs more than a clock read. It returns
// the deadline set.
func (p *proxied) moved(src, dst net.Conn, deadline, now time.Time) time.Time {
	p.last.Store(now.UnixNano())
	if p.idle <= 0 || deadline.Sub(now) > p.idle/2 {
		return deadline
	}
	deadline = now.Add(p.idle)
	_ = src.SetReadDeadline(deadline)
	_ = dst.SetWriteDeadline(deadline)
	return deadline
}

// forward observes a read made at now, then writes it on. Observing first matters: a
// request's Seq must be recorded before its answer can come back.
func (p *proxied) forward(dir foo.Direction, st *foo.Stream, dst net.Conn, b []byte, now time.Time) error {
	if dir == foo.FromServer {
		p.toClient.Lock()
		defer p.toClient.Unlock()
		if p.aborted.Load() {
			return errIdle // the client already has the proxy's NAKs
		}
	}
	if err := st.ObserveAt(b, now); err != nil {
		p.h.set.Stats.Invalid()
		// The complete lines before the long one are counted: pass them on.
		var long *foo.LineTooLongError
		if errors.As(err, &long) && long.Start > 0 {
			if _, werr := dst.Write(b[:long.Start]); werr != nil && dir == foo.FromServer {
				p.torn = true
			}
		}
		return err
	}
	_, err := dst.Write(b)
	if err != nil && dir == foo.FromServer {
		p.torn = true
	}
	return err
}

// expire ends a connection that passed no byte for idle_timeout (abort).
func (p *proxied) expire() {
	if p.abort(fmt.Sprintf("proxy: no answer within %s", p.idle)) {
		p.h.logger.Debug("foo connection idle", zap.String("remote", p.client.RemoteAddr().String()),
			zap.Duration("idle_timeout", p.idle))
	}
}

// tooLong ends a connection on which dir sent a line over max_line (abort).
func (p *proxied) tooLong(dir foo.Direction) {
	from := "client"
	if dir == foo.FromServer {
		from = "server"
	}
	if p.abort(fmt.Sprintf("proxy: a line from the %s is over max_line (%d bytes)", from, p.h.MaxLine)) {
		p.h.logger.Debug("foo line over max_line", zap.String("remote", p.client.RemoteAddr().String()),
			zap.String("from", from), zap.Int("max_line", p.h.MaxLine))
	}
}

// abort ends the connection on the proxy's own account: requests still
// unanswered get "NAK <seq> <reason>" — unless the client was left in the
// middle of a line — then the server side closes and the client's reader
// stops; Handle closes the client after the NAKs (closeAborted). Only the
// first call acts; it reports whether it did.
func (p *proxied) abort(reason string) bool {
	if !p.aborted.CompareAndSwap(false, true) {
		return false
	}
	// An answer stuck in a write to a client that stopped reading holds
	// toClient: make it give up.
	_ = p.client.SetWriteDeadline(time.Now().Add(time.Second))
	p.toClient.Lock()
	if seqs := p.conn.Outstanding(); len(seqs) > 0 && p.answers.AtLineStart() && !p.torn {
		var b []byte
		for _, seq := range seqs {
			b = fmt.Appendf(b, "NAK %d %s\n", seq, reason)
		}
		_ = p.client.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := p.client.Conn.Write(b); err == nil {
			p.h.set.Stats.ProxyNAKs(len(seqs))
		}
	}
	p.toClient.Unlock()
	_ = p.server.Close()
	_ = p.client.SetReadDeadline(time.Now())
	return true
}

// closeAborted ends a client connection the proxy aborted. Normally it
// half-closes and gives the client a second to read the NAKs
// (relay.CloseAfterReply). But a
// client that does not take what was written to it (torn: a write to it
// failed; or bytes still unacknowledged after that second) would be left
// blocked in its own writes behind our FIN and its zero window: it gets a
// TCP reset instead, the only thing it can still receive.
func closeAborted(c net.Conn, torn bool) {
	if !torn {
		relay.DrainAfterReply(c, time.Second)
	}
	if tc, ok := c.(*net.TCPConn); ok && (torn || tcpinfo.Unsent(c) > 0) {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func closeBoth(a, b any) {
	for _, c := range []any{a, b} {
		if cl, ok := c.(io.Closer); ok {
			_ = cl.Close()
		}
	}
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
	_ layer4.NextHandler = (*Handler)(nil)
)

// nakFirstRequest answers the client's first request, if it sent one within
// a second, with "NAK <seq> <reason>" — the protocol's own way to say no —
// then closes without a reset.
func (h *Handler) nakFirstRequest(cx *layer4.Connection, reason string) {
	_ = cx.SetReadDeadline(time.Now().Add(time.Second))
	seq, _, err := readprelude.Read(cx, func(b []byte) (uint64, int, error) {
		ok, seq, err := foo.MatchFirstLine(b)
		if err == nil && !ok {
			err = foo.ErrMalformed
		}
		return seq, 0, err
	}, foo.ErrNeedMore)
	if err != nil {
		return
	}
	_ = cx.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := fmt.Fprintf(cx, "NAK %d %s\n", seq, reason); err == nil {
		h.set.Stats.ProxyNAKs(1)
		relay.CloseAfterReply(cx.Conn, time.Second)
	}
}
