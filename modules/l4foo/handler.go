package l4foo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/internal/readprelude"
	"github.com/caddyprelude/prelude/modules/relay"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// DefaultMaxLine is the longest line, LF excluded, before the connection is
// closed.
const DefaultMaxLine = 64 << 10

// Handler proxies Foo connections to a farm while counting every line in
// both directions. Unlike the other handlers it must see every byte, so it
// copies through userspace instead of splicing.
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
	if h.Recovery == "" {
		h.Recovery = DefaultRecoveryPath(h.StatsName)
	}
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
	lease, err := h.Dial(ctx, cx.RemoteAddr(), func(context.Context, *farm.Member, net.Conn) error { return nil })
	cancel()
	if err != nil {
		h.logger.Debug("foo upstream unreachable", zap.String("remote", cx.RemoteAddr().String()), zap.Error(err))
		nakFirstRequest(cx, "proxy: no upstream reachable")
		return nil
	}
	defer lease.Release()
	defer lease.Conn.Close()
	defer relay.Track()() // a graceful exit waits for this session too
	conn := h.set.Stats.Open()
	defer conn.Close()
	errc := make(chan error, 1)
	go func() { errc <- h.pipe(lease.Conn, cx, conn, foo.FromClient) }()
	err = h.pipe(cx.Conn, lease.Conn, conn, foo.FromServer) // raw socket: CloseWrite, no wrapper
	if e := <-errc; err == nil {
		err = e
	}
	h.logger.Debug("foo connection ended", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", lease.Member.Addr), zap.Error(err))
	return nil
}

// pipe copies src to dst, passing every read to the analyser as it flows.
// At src's EOF a final line without LF is observed too and dst is
// half-closed. A line over max_line is counted invalid and ends the
// connection.
func (h *Handler) pipe(dst io.Writer, src io.Reader, conn *foo.Conn, dir foo.Direction) error {
	st := conn.Stream(dir, h.MaxLine)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			// Observe before forwarding: a request's Seq must be recorded
			// before its answer can come back on the other direction.
			if err := st.Observe(buf[:n]); err != nil {
				h.set.Stats.Invalid()
				closeBoth(dst, src)
				return err
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				closeBoth(dst, src)
				return err
			}
		}
		if rerr == io.EOF {
			st.End()
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			return nil
		}
		if rerr != nil {
			closeBoth(dst, src)
			return rerr
		}
	}
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
func nakFirstRequest(cx *layer4.Connection, reason string) {
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
		relay.CloseAfterReply(cx.Conn, time.Second)
	}
}
