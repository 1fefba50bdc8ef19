package l4git

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/git"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/internal/readprelude"
	"github.com/caddyprelude/prelude/modules/internal/startlog"
	"github.com/caddyprelude/prelude/modules/relay"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// DefaultRequestTimeout bounds the time to read the first request.
const DefaultRequestTimeout = 10 * time.Second

// Handler forwards git:// requests to a farm of git daemons, optionally
// rewriting the repository path, or answers them with an ERR line.
type Handler struct {
	// The upstream farm (to, lb_policy, dial_timeout, ...).
	farm.Farm
	// A path template, e.g. "/srv{l4.git.repo}" or "/{l4.git.owner}.git".
	Rewrite string `json:"rewrite,omitempty"`
	// Answer "ERR <message>" (placeholders allowed) instead of proxying.
	Error string `json:"error,omitempty"`
	// Time allowed to read the whole first request. Default 10s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`
	// Time the upstream may take to send its first byte after the request
	// (ProxyMachine's inactivity_timeout). Zero (the default) waits forever.
	FirstByteTimeout caddy.Duration `json:"first_byte_timeout,omitempty"`

	logger  *zap.Logger
	metrics *gitMetrics
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.git",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and provisions the farm.
func (h *Handler) Provision(ctx caddy.Context) error {
	startlog.Listeners(ctx)
	relay.RegisterMetrics(ctx.GetMetricsRegistry())
	h.logger = ctx.Logger()
	h.metrics = initMetrics(ctx.GetMetricsRegistry())
	if h.RequestTimeout == 0 {
		h.RequestTimeout = caddy.Duration(DefaultRequestTimeout)
	}
	switch {
	case h.Error != "" && (len(h.To) > 0 || h.HasLookup() || h.Rewrite != ""):
		return errors.New("error: answers the request itself; it excludes to, lookup and rewrite")
	case h.Error == "" && len(h.To) == 0 && !h.HasLookup():
		return errors.New("to: an upstream is required (or a lookup, or error to refuse the request)")
	case h.Error != "":
		return nil
	}
	if h.Farm.Name == "" {
		h.Farm.Name = "git"
	}
	return h.Farm.Provision(ctx)
}

// Cleanup releases the farm.
func (h *Handler) Cleanup() error { return h.Farm.Cleanup() }

// Handle reads the request, then answers it with an ERR line or forwards it
// (rewritten if configured) and relays the rest of the connection.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	_ = cx.SetReadDeadline(time.Now().Add(time.Duration(h.RequestTimeout)))
	req, rest, err := readprelude.Read(cx, git.ParseRequest, git.ErrNeedMore)
	if err != nil {
		return h.finish(cx, nil, outcomeMalformed, requestError(err))
	}
	_ = cx.SetReadDeadline(time.Time{})
	setPlaceholders(cx, req)
	repl := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer)
	if h.Error != "" {
		return h.finish(cx, req, outcomeRefused, repl.ReplaceAll(h.Error, ""))
	}
	fwd := req
	if h.Rewrite != "" {
		p, err := git.CleanPath(repl.ReplaceAll(h.Rewrite, ""))
		if err != nil {
			return h.finish(cx, req, outcomeRewriteRefused, fmt.Sprintf("cannot route %s: rewritten %v", req.Path, err))
		}
		fwd = req.WithPath(p)
	}
	out, err := fwd.Append(nil)
	if err != nil {
		return h.finish(cx, req, outcomeRewriteRefused, fmt.Sprintf("cannot route %s: %v", req.Path, err))
	}
	out = append(out, rest...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(h.RequestTimeout))
	defer cancel()
	lease, err := h.Dial(farm.WithReplacer(ctx, repl), cx.RemoteAddr(), func(_ context.Context, _ *farm.Member, conn net.Conn) error {
		_, err := conn.Write(out)
		return err
	})
	var noRoute *farm.NoRouteError
	if errors.As(err, &noRoute) {
		return h.finish(cx, req, outcomeNoRoute, fmt.Sprintf("no route for repository %s (%s)", req.Path, noRoute.Error()))
	}
	var refused *farm.RefusedError
	if errors.As(err, &refused) {
		return h.finish(cx, req, outcomeLookupRefused, fmt.Sprintf("access to %s refused: %s", req.Path, refused.Reason))
	}
	if err != nil {
		h.logger.Debug("git upstream unreachable", zap.String("remote", cx.RemoteAddr().String()),
			zap.String("repo", req.Path), zap.Error(err))
		return h.finish(cx, req, outcomeUnreachable, fmt.Sprintf("repository server for %s is unreachable", req.Path))
	}
	defer lease.Release()
	defer lease.Conn.Close()
	repl.Set("l4.git.upstream", lease.Member.Addr)
	repl.Set("l4.git.upstream_repo", fwd.Path)
	var first int64
	if h.FirstByteTimeout > 0 {
		first, err = relay.AwaitFirstByte(cx, lease.Conn, time.Duration(h.FirstByteTimeout))
		if errors.Is(err, relay.ErrNoFirstByte) {
			h.Emit(farm.EventInactivityTimeout, map[string]any{"upstream": lease.Member.Addr,
				"timeout": time.Duration(h.FirstByteTimeout).String(), "repo": req.Path})
			return h.finish(cx, req, outcomeUnreachable, fmt.Sprintf("repository server for %s did not answer within %s",
				req.Path, time.Duration(h.FirstByteTimeout)))
		}
		if err != nil {
			return h.finish(cx, req, outcomeUnreachable, "")
		}
	}
	h.logger.Debug("git request routed", zap.String("remote", cx.RemoteAddr().String()),
		zap.String("upstream", lease.Member.Addr), zap.String("service", req.Service),
		zap.String("repo", req.Path), zap.String("upstream_repo", fwd.Path))
	up, down, err := relay.Relay(cx, lease.Conn)
	h.metrics.requests.WithLabelValues(req.Service, outcomeProxied).Inc()
	h.metrics.bytes.WithLabelValues(req.Service, "upstream").Add(float64(up + int64(len(out))))
	h.metrics.bytes.WithLabelValues(req.Service, "downstream").Add(float64(first + down))
	h.logger.Debug("git connection ended", zap.String("remote", cx.RemoteAddr().String()),
		zap.Int64("bytes_upstream", up), zap.Int64("bytes_downstream", down), zap.Error(err))
	return nil
}

// finish answers with "ERR <msg>" (nothing for a client that sent nothing or
// timed out before a full request) and counts the outcome.
func (h *Handler) finish(cx *layer4.Connection, req *git.Request, outcome, msg string) error {
	service := "unknown"
	if req != nil {
		service = req.Service
	}
	h.metrics.requests.WithLabelValues(service, outcome).Inc()
	if msg != "" {
		_ = cx.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := cx.Write(git.AppendError(nil, msg)); err == nil {
			relay.CloseAfterReply(cx.Conn, time.Second)
		}
	}
	return nil
}

// requestError is the ERR text for a request that could not be read, or ""
// when the client is gone.
func requestError(err error) string {
	switch {
	case errors.Is(err, git.ErrMalformed):
		return "malformed git:// request"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "timed out waiting for the git:// request"
	}
	return ""
}

// Outcomes label requests in metrics.
const (
	outcomeProxied        = "proxied"
	outcomeRefused        = "error_reply"
	outcomeRewriteRefused = "rewrite_refused"
	outcomeUnreachable    = "unreachable"
	outcomeMalformed      = "malformed"
	outcomeNoRoute        = "no_route"       // a lookup does not hold the key, or failed
	outcomeLookupRefused  = "lookup_refused" // a lookup's answer refuses the client
)

// Interface guards
var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
	_ layer4.NextHandler = (*Handler)(nil)
)

// Validate checks the farm unless the handler only answers with an error.
func (h *Handler) Validate() error {
	if h.Error != "" {
		return nil
	}
	return h.Farm.Validate()
}

var _ caddy.Validator = (*Handler)(nil)
