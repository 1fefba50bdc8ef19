package l4amqp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/internal/startlog"
	"github.com/caddyprelude/prelude/modules/relay"
)

func init() {
	caddy.RegisterModule(&Handler{})
}

// Defaults for the handshake the handler plays with clients.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultChannelMax       = 2047   // RabbitMQ's default channel_max
	DefaultFrameMax         = 131072 // RabbitMQ's default frame_max
	DefaultHeartbeat        = 60     // RabbitMQ's default heartbeat, seconds
	// Below client libraries' own handshake limits (pika gives up after
	// 10-15 s), so that a held client gets the proxy's Close, not its
	// library's timeout.
	DefaultPauseTimeout = 8 * time.Second
)

// Handler terminates the client's AMQP 0-9-1 handshake up to Connection.Open,
// picks a farm by the requested vhost, replays the handshake to a member and
// then relays bytes between client and broker.
type Handler struct {
	// Vhost routes, tried in order.
	Routes []*Route `json:"routes,omitempty"`
	// The farm for vhosts no route matches. Without it they get Close 530.
	Default *farm.Farm `json:"default,omitempty"`
	// How long a client may take from its first byte to Connection.Open.
	// Default 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`
	// Tune limits offered to clients before the broker is known. The offer is
	// lowered to the strictest limits seen from any member. Defaults: 2047,
	// 131072, 60 (RabbitMQ's defaults).
	ChannelMax uint16  `json:"channel_max,omitempty"`
	FrameMax   uint32  `json:"frame_max,omitempty"`
	Heartbeat  *uint16 `json:"heartbeat,omitempty"`
	// Limits for every vhost block that does not set its own.
	Limits *Limits `json:"limits,omitempty"`
	// How long a client of a paused vhost is held before it gets a Close.
	// Default 8s.
	PauseTimeout caddy.Duration `json:"pause_timeout,omitempty"`
	// Clients held by a pause are routed, at resume, by the handler with
	// this name in the config loaded then. Default "amqp".
	Name string `json:"name,omitempty"`
	// "off" turns the per-session statistics (messages, channels, blocked
	// time) off: sessions nothing captures or traces are then not decoded.
	// Default "on".
	Stats string `json:"stats,omitempty"`
	// With statistics on, count messages per exchange and per queue too,
	// for at most this many names of each (process-wide; later names count
	// under "(other)"). Default 0: off.
	StatsObjects int `json:"stats_objects,omitempty"`
	// Captures that run while this config is loaded, from its start. A
	// reload that keeps one (same file) keeps it running; the file is
	// appended to.
	Captures []Capture `json:"captures,omitempty"`
	// How routed sessions are relayed: "loop" (the default) hands plain
	// TCP sessions without a data rate to the process's event loops;
	// "goroutines" copies every session with a goroutine per direction,
	// as sessions with TLS or a data rate always are.
	Relay string `json:"relay,omitempty"`

	captureKeys []string
	limits      *learnedLimits
	logger      *zap.Logger
	metrics     *handlerMetrics
	ctx         caddy.Context
	events      *caddyevents.App
}

// Route sends the vhosts matching any of its patterns to its farm.
type Route struct {
	// Exact vhost names or path.Match globs ("/team-*").
	VHosts []string `json:"vhosts,omitempty"`
	farm.Farm
	// Limits for this block (fields not set fall back to the handler's).
	Limits *Limits `json:"limits,omitempty"`
	// Pool the block's broker connections: clients share them, each
	// client's channels mapped onto channels of one connection. Off
	// without it.
	Pool *PoolOptions `json:"pool,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.amqp",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and provisions the farms.
func (h *Handler) Provision(ctx caddy.Context) error {
	relay.RegisterMetrics(ctx.GetMetricsRegistry())
	h.logger = ctx.Logger()
	h.ctx = ctx
	if app, err := ctx.AppIfConfigured("events"); err == nil { // no events app: no subscribers
		h.events, _ = app.(*caddyevents.App)
	}
	if h.HandshakeTimeout == 0 {
		h.HandshakeTimeout = caddy.Duration(DefaultHandshakeTimeout)
	}
	if h.ChannelMax == 0 {
		h.ChannelMax = DefaultChannelMax
	}
	if h.FrameMax == 0 {
		h.FrameMax = DefaultFrameMax
	}
	if h.Heartbeat == nil {
		hb := uint16(DefaultHeartbeat)
		h.Heartbeat = &hb
	}
	for i, r := range h.Routes {
		if len(r.VHosts) == 0 {
			return fmt.Errorf("routes[%d].vhosts: at least one vhost pattern is required", i)
		}
		for _, p := range r.VHosts {
			if _, err := path.Match(p, ""); err != nil {
				return fmt.Errorf("routes[%d].vhosts: bad pattern %q: %v", i, p, err)
			}
		}
		r.Farm.Name = "amqp vhost " + strings.Join(r.VHosts, " ")
		r.Farm.SetProbe(probeBroker)
		r.Farm.OnRemoved = severUpstream
		r.Farm.OnMoved = severMoved
		if err := r.Farm.Provision(ctx); err != nil {
			return fmt.Errorf("routes[%d] (vhost %s): %v", i, r.VHosts[0], err)
		}
	}
	if h.Default != nil {
		h.Default.Name = "amqp default"
		h.Default.SetProbe(probeBroker)
		h.Default.OnRemoved = severUpstream
		h.Default.OnMoved = severMoved
		if err := h.Default.Provision(ctx); err != nil {
			return fmt.Errorf("default: %v", err)
		}
	}
	if len(h.Routes) == 0 && h.Default == nil {
		return errors.New("routes: at least one vhost route or a default farm is required")
	}
	if h.FrameMax < amqp.FrameMinSize {
		return fmt.Errorf("frame_max: %d is below the protocol minimum %d", h.FrameMax, amqp.FrameMinSize)
	}
	if err := h.Limits.provision(); err != nil {
		return fmt.Errorf("limits: %v", err)
	}
	for i, r := range h.Routes {
		if err := r.Limits.provision(); err != nil {
			return fmt.Errorf("routes[%d].limits: %v", i, err)
		}
		if err := r.Pool.provision(); err != nil {
			return fmt.Errorf("routes[%d].pool: %v", i, err)
		}
	}
	if h.PauseTimeout == 0 {
		h.PauseTimeout = caddy.Duration(DefaultPauseTimeout)
	}
	if h.Name == "" {
		h.Name = "amqp"
	}
	if h.Stats != "" && h.Stats != "on" && h.Stats != "off" {
		return fmt.Errorf(`stats: %q is not "on" or "off"`, h.Stats)
	}
	if h.Relay != "" && h.Relay != relayLoop && h.Relay != relayGoroutines {
		return fmt.Errorf("relay: %q is neither %q nor %q", h.Relay, relayLoop, relayGoroutines)
	}
	if h.StatsObjects < 0 {
		return fmt.Errorf("stats_objects: %d is negative", h.StatsObjects)
	}
	for limit := objectLimit.Load(); int64(h.StatsObjects) > limit; limit = objectLimit.Load() {
		if objectLimit.CompareAndSwap(limit, int64(h.StatsObjects)) {
			break
		}
	}
	if err := h.startCaptures(); err != nil {
		return err
	}
	h.limits = sharedLimits
	h.metrics = initMetrics(ctx.GetMetricsRegistry())
	initPoolMetrics(ctx.GetMetricsRegistry())
	startReaper.Do(func() { go reapPools(nil) })
	registerHandler(h)
	registerShutdown.Do(func() { caddy.OnExit(closeOnShutdown) })
	h.logger.Info("amqp routes", zap.String("name", h.Name), zap.Strings("routes", h.routeLines()))
	startlog.Listeners(ctx)
	go h.drainRemovedMembers()
	return nil
}

// drainRemovedMembers runs once the config that provisioned h is running
// (h is still the current handler of its name half a second later): live
// sessions whose member the new config no longer has, in a farm with
// drain_removed, are closed with Close 320.
func (h *Handler) drainRemovedMembers() {
	time.Sleep(500 * time.Millisecond)
	if currentHandler(h) != h {
		return
	}
	for _, s := range Sessions("") {
		f, _, _ := h.route(s.VHost)
		if f == nil || !f.DrainRemoved {
			continue
		}
		f.Members(context.Background())
		if !f.Current(s.Upstream) {
			severUpstreamSession(s.ID, s.Upstream)
		}
	}
}

// Cleanup releases the farms' shared member state.
func (h *Handler) Cleanup() error {
	unregisterHandler(h)
	h.releaseCaptures()
	for _, r := range h.Routes {
		_ = r.Farm.Cleanup()
	}
	if h.Default != nil {
		_ = h.Default.Cleanup()
	}
	return nil
}

// statsOn reports whether sessions are decoded for statistics.
// Values of Handler.Relay.
const (
	relayLoop       = "loop"
	relayGoroutines = "goroutines"
)

func (h *Handler) statsOn() bool { return h.Stats != "off" }

// route returns the farm for vhost, a stable label for metrics and the
// block's effective limits.
func (h *Handler) route(vhost string) (*farm.Farm, string, Limits) {
	for _, r := range h.Routes {
		for _, p := range r.VHosts {
			if ok, _ := path.Match(p, vhost); ok {
				return &r.Farm, p, effective(r.Limits, h.Limits)
			}
		}
	}
	if h.Default != nil {
		return h.Default, "default", effective(nil, h.Limits)
	}
	return nil, "unrouted", Limits{}
}

// routeLines describe the routes for the start-up log: "pattern... -> members".
func (h *Handler) routeLines() []string {
	var out []string
	for _, r := range h.Routes {
		line := strings.Join(r.VHosts, " ") + " -> " + r.Farm.Describe()
		if r.Pool != nil {
			line += " (pooled)"
		}
		out = append(out, line)
	}
	if h.Default != nil {
		out = append(out, "default -> "+h.Default.Describe())
	}
	return out
}

// poolOf returns the pool options of the vhost block labelled label, or
// nil when it does not pool.
func (h *Handler) poolOf(label string) *PoolOptions {
	for _, r := range h.Routes {
		for _, p := range r.VHosts {
			if p == label {
				return r.Pool
			}
		}
	}
	return nil
}

// Handle runs one client session: handshake, routing, replay, relay. The
// session is not bound to the config's lifetime, so a reload does not cut it.
func (h *Handler) Handle(cx *layer4.Connection, _ layer4.Handler) error {
	start := time.Now()
	s := &session{h: h, cx: cx, remote: cx.RemoteAddr(), start: start}
	source := sourceKey(s.remote)
	record(true, "", "", source, func(c *Counters) { c.Accepted++ })
	outcome := s.run()
	if outcome != outcomeRouted { // a routed one is counted when it is routed (routed)
		h.metrics.connections.WithLabelValues(s.routeLabel, outcome).Inc()
	}
	recordOutcome(s, source, outcome)
	if outcome == outcomeRouted {
		return nil
	}
	h.logger.Debug("amqp session ended before routing",
		zap.String("remote", s.remote.String()), zap.String("outcome", outcome),
		zap.Duration("duration", time.Since(start)))
	return nil
}

// Events the handler emits on Caddy's event bus (with an events app).
const (
	// EventSessionOpen: a session was routed. Data: id, client, vhost, user, upstream.
	EventSessionOpen = "amqp_session_open"
	// EventSessionClose: a routed session ended. Data: id, client, vhost,
	// upstream, ended (clean, client_dropped, broker_dropped, severed),
	// bytes_in, bytes_out.
	EventSessionClose = "amqp_session_close"
)

func (h *Handler) emit(name string, data map[string]any) {
	if h.events != nil {
		h.events.Emit(h.ctx, name, data)
	}
}

// recordOutcome counts a session's outcome in the stats: the vhost's
// acceptance once Open named it, and why an unrouted session ended.
func recordOutcome(s *session, source, outcome string) {
	vhost := ""
	if s.open != nil {
		vhost = statsVHost(s, outcome)
		record(false, vhost, "", "", func(c *Counters) { c.Accepted++ })
	}
	var f func(*Counters)
	switch outcome {
	case outcomeRouted:
		return // counted by the relay
	case outcomeUnrouted:
		f = func(c *Counters) { c.Refused[refusedNoRoute]++ }
	case outcomeRefused:
		f = func(c *Counters) { c.Refused[refusedAuth]++ }
	case outcomeLimited:
		f = func(c *Counters) { c.Refused[refusedLimit]++ }
	case outcomePauseTimeout:
		f = func(c *Counters) { c.Refused[refusedPauseTimeout]++ }
	case outcomeClientClosed:
		f = func(c *Counters) { c.HandshakeFailed++ }
		if s.held {
			f = func(c *Counters) { c.HandshakeFailed++; c.PauseGaveUp++ }
		}
	case outcomeUnreachable:
		f = func(c *Counters) { c.FailedUpstream++ }
	default:
		f = func(c *Counters) { c.HandshakeFailed++ }
	}
	record(true, vhost, "", source, f)
}

// statsVHost is the key a session's vhost counts under: its name when a
// vhost block names it exactly, a broker accepted it (routed) or an
// operator paused it; else notRouted. Names a client makes up never get
// counters of their own.
func statsVHost(s *session, outcome string) string {
	vhost := s.open.VirtualHost
	if outcome == outcomeRouted || s.held || s.routeLabel == vhost {
		return vhost
	}
	return notRouted
}

// routed counts a session when the client is told it is in.
func (s *session) routed(label, upstream string) {
	s.h.metrics.connections.WithLabelValues(label, outcomeRouted).Inc()
	record(false, "", upstream, "", func(c *Counters) { c.Accepted++ })
}

func (h *Handler) dialContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), time.Duration(h.HandshakeTimeout))
}

// remoteString is an address as it should appear to brokers ("" for none).
func remoteString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
	_ layer4.NextHandler = (*Handler)(nil)
)
