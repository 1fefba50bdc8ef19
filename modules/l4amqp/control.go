package l4amqp

import (
	"context"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/modules/internal/tcpinfo"
	"github.com/caddyprelude/prelude/modules/relay"
)

// Session is one live, routed AMQP session as GET /prelude/amqp/sessions
// reports it. It never holds credentials.
type Session struct {
	ID             uint64    `json:"id"`
	Client         string    `json:"client"`
	VHost          string    `json:"vhost"`
	User           string    `json:"user"`
	ConnectionName string    `json:"connection_name"`
	Upstream       string    `json:"upstream"`
	Route          string    `json:"route"`
	Started        time.Time `json:"started"`
	// Bytes so far, from the kernel's counters of the client socket:
	// in = from the client, out = to the client (handshake included).
	BytesIn  uint64 `json:"bytes_in"`
	BytesOut uint64 `json:"bytes_out"`
	// How the session is relayed: "loop" (an event loop) or "goroutines"
	// (TLS, data_rate, relay goroutines, or still in its handshake), or
	// "pool" (its channels ride a pooled broker connection).
	Relay string `json:"relay"`
	// The pooled broker connection the session rides, as the broker names
	// it (connection_name), for a pooled session.
	Pool string `json:"pool,omitempty"`
}

// Ways a session can be severed by an operator.
const (
	severNow      = 1
	severGraceful = 2
)

// liveSession is a registry entry: what the API shows, and how to end it.
type liveSession struct {
	info     Session
	client   net.Conn
	upstream net.Conn                     // nil for a pooled session
	pooled   *poolClient                  // the pooled session, or nil
	watch    *watch                       // nil when nothing looks inside the session
	polled   atomic.Pointer[relay.Polled] // set while an event loop relays it
	sever    atomic.Int32                 // 0, severNow or severGraceful: set once
	why      atomic.Value                 // the Close reply text of a graceful sever
}

// Reply texts of graceful severs.
const (
	textOperatorClosed = "CONNECTION_FORCED - closed by an operator through the proxy's admin API"
	textShuttingDown   = "CONNECTION_FORCED - proxy shutting down"
)

func (l *liveSession) reason() string {
	if s, ok := l.why.Load().(string); ok {
		return s
	}
	return textOperatorClosed
}

// stop asks the relay to end: at once (both sockets closed), or gracefully
// (the relays stop at a frame boundary and the client gets Close 320).
func (l *liveSession) stop(how int32, text string) {
	if text != "" {
		l.why.CompareAndSwap(nil, text)
	}
	if !l.sever.CompareAndSwap(0, how) {
		return
	}
	if l.pooled != nil {
		l.pooled.sever(how, l.reason())
		return
	}
	if p := l.polled.Load(); p != nil {
		l.stopPolled(p, how)
		return
	}
	if how == severNow {
		_ = l.client.Close()
		_ = l.upstream.Close()
		return
	}
	now := time.Now()
	_ = l.client.SetReadDeadline(now)
	_ = l.upstream.SetReadDeadline(now)
}

// stopPolled severs a session an event loop relays: at once, or by taking
// it out of the loop for relayPolled to finish at a frame boundary.
func (l *liveSession) stopPolled(p *relay.Polled, how int32) {
	if how == severNow {
		p.Close()
		return
	}
	p.Stop()
}

// bytes is what the kernel received from the client and sent to it so far.
func (l *liveSession) bytes() (received, sent uint64) {
	if p := l.polled.Load(); p != nil {
		p.ClientSocket(func(fd int) { received, sent = tcpinfo.FDBytes(fd) })
		return received, sent
	}
	return tcpinfo.Bytes(l.client)
}

var (
	sessionSeq atomic.Uint64
	sessionsMu sync.Mutex
	sessions   = map[uint64]*liveSession{}
)

// newSessionID numbers a session before it is listed.
func newSessionID() uint64 { return sessionSeq.Add(1) }

// addSession lists l. Its fields that readers of the list use (info, watch)
// must be set before: the list is read by the admin API and by metric
// scrapes on other goroutines.
func addSession(l *liveSession) {
	sessionsMu.Lock()
	sessions[l.info.ID] = l
	sessionsMu.Unlock()
}

func removeSession(id uint64) {
	sessionsMu.Lock()
	delete(sessions, id)
	sessionsMu.Unlock()
}

// Sessions returns the live sessions, oldest first; vhost "" means all.
func Sessions(vhost string) []Session {
	sessionsMu.Lock()
	out := make([]Session, 0, len(sessions))
	live := make([]*liveSession, 0, len(sessions))
	for _, l := range sessions {
		if vhost == "" || l.info.VHost == vhost {
			out = append(out, l.info)
			live = append(live, l)
		}
	}
	sessionsMu.Unlock()
	for i := range out {
		out[i].BytesIn, out[i].BytesOut = live[i].bytes()
		out[i].Relay = relayGoroutines
		switch {
		case live[i].pooled != nil:
			out[i].Relay = "pool"
		case live[i].polled.Load() != nil:
			out[i].Relay = relayLoop
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SeverSession ends one session; it reports false for an unknown id.
func SeverSession(id uint64, graceful bool) bool {
	sessionsMu.Lock()
	l := sessions[id]
	sessionsMu.Unlock()
	if l == nil {
		return false
	}
	l.stop(severHow(graceful), "")
	return true
}

// SeverVHost ends every session of vhost and returns how many.
func SeverVHost(vhost string, graceful bool) int {
	victims := sessionsWhere(func(l *liveSession) bool { return l.info.VHost == vhost })
	for _, l := range victims {
		l.stop(severHow(graceful), "")
	}
	return len(victims)
}

// sessionsWhere returns the live sessions for which keep is true.
func sessionsWhere(keep func(*liveSession) bool) []*liveSession {
	sessionsMu.Lock()
	defer sessionsMu.Unlock()
	var out []*liveSession
	for _, l := range sessions {
		if keep(l) {
			out = append(out, l)
		}
	}
	return out
}

func severHow(graceful bool) int32 {
	if graceful {
		return severGraceful
	}
	return severNow
}

// Pausing: a paused vhost's new clients wait after Open until Resume.
var (
	pausedMu sync.Mutex
	paused   = map[string]*pause{}
)

// pause is one paused vhost: resumed is closed at resume; held counts the
// clients waiting.
type pause struct {
	resumed chan struct{}
	held    int
}

// PauseVHost holds new clients of vhost after their Open. It reports false
// when the vhost was already paused.
func PauseVHost(vhost string) bool {
	pausedMu.Lock()
	defer pausedMu.Unlock()
	if _, ok := paused[vhost]; ok {
		return false
	}
	paused[vhost] = &pause{resumed: make(chan struct{})}
	return true
}

// ResumeVHost releases the held clients of vhost to the routes current now.
// It reports false when the vhost was not paused.
func ResumeVHost(vhost string) bool {
	pausedMu.Lock()
	defer pausedMu.Unlock()
	p, ok := paused[vhost]
	if ok {
		close(p.resumed)
		delete(paused, vhost)
	}
	return ok
}

// PausedVHosts lists the paused vhosts.
func PausedVHosts() []string {
	pausedMu.Lock()
	defer pausedMu.Unlock()
	out := make([]string, 0, len(paused))
	for v := range paused {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

// HeldClients is, per paused vhost, how many clients are waiting.
func HeldClients() map[string]int {
	pausedMu.Lock()
	defer pausedMu.Unlock()
	out := make(map[string]int, len(paused))
	for v, p := range paused {
		out[v] = p.held
	}
	return out
}

// holdFor registers a client held by vhost's pause: it returns the channel
// closed at resume and the function to call when the client stops
// waiting, or nil when the vhost is not paused.
func holdFor(vhost string) (resumed chan struct{}, done func()) {
	pausedMu.Lock()
	defer pausedMu.Unlock()
	p := paused[vhost]
	if p == nil {
		return nil, nil
	}
	p.held++
	return p.resumed, func() {
		pausedMu.Lock()
		p.held--
		pausedMu.Unlock()
	}
}

// VHostRoute says how the current configs route vhost: the route labels
// that serve it (a vhost pattern, or "default"), and, when only a default
// farm does while a vhost block names "/"+vhost, that name: an operator
// who paused "orders" likely meant "/orders" (URL-escaped %2Forders).
func VHostRoute(vhost string) (routes []string, meant string) {
	handlersMu.Lock()
	hs := make([]*Handler, 0, len(handlers))
	for _, h := range handlers {
		hs = append(hs, h)
	}
	handlersMu.Unlock()
	onlyDefault := true
	for _, h := range hs {
		if _, label, _ := h.route(vhost); label != "unrouted" {
			routes = append(routes, label)
			onlyDefault = onlyDefault && label == "default"
		}
	}
	if (len(routes) == 0 || onlyDefault) && !strings.HasPrefix(vhost, "/") {
		for _, h := range hs {
			if _, label, _ := h.route("/" + vhost); label != "unrouted" && label != "default" {
				meant = "/" + vhost
			}
		}
	}
	sort.Strings(routes)
	return routes, meant
}

// RouteLabels lists every vhost block's patterns of the current configs,
// and "default" where a handler has a default farm.
func RouteLabels() []string {
	handlersMu.Lock()
	defer handlersMu.Unlock()
	var out []string
	for _, h := range handlers {
		for _, r := range h.Routes {
			out = append(out, r.VHosts...)
		}
		if h.Default != nil {
			out = append(out, "default")
		}
	}
	sort.Strings(out)
	return out
}

// Current handlers by name: clients held by a pause are routed, at resume,
// by the handler of that name in the config loaded then.
var (
	handlersMu sync.Mutex
	handlers   = map[string]*Handler{}
)

func registerHandler(h *Handler) {
	handlersMu.Lock()
	handlers[h.Name] = h
	handlersMu.Unlock()
}

func unregisterHandler(h *Handler) {
	handlersMu.Lock()
	if handlers[h.Name] == h {
		delete(handlers, h.Name)
	}
	handlersMu.Unlock()
}

// currentHandler returns the newest handler named like h, or h itself.
func currentHandler(h *Handler) *Handler {
	handlersMu.Lock()
	defer handlersMu.Unlock()
	if cur := handlers[h.Name]; cur != nil {
		return cur
	}
	return h
}

var registerShutdown sync.Once

// closeOnShutdown makes a graceful exit end AMQP sessions in the protocol:
// it waits for them to end on their own for the drain period (less a
// second), then sends every remaining client Close 320 "proxy shutting
// down" between two broker frames, instead of letting the exit reset them.
// It runs before the relay's own drain, which then finds nothing to wait for.
func closeOnShutdown(context.Context) {
	n := liveCount()
	if n == 0 {
		return
	}
	wait := max(relay.DrainTimeout-time.Second, 0)
	log := caddy.Log().Named("layer4.handlers.amqp")
	log.Info("draining AMQP sessions before exit: waiting for them to end, then Close 320 to the rest",
		zap.Int("sessions", n), zap.Duration("up_to", wait))
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) && liveCount() > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	left := sessionsWhere(func(*liveSession) bool { return true })
	if len(left) > 0 {
		log.Info("closing the AMQP sessions still open with Close 320", zap.Int("sessions", len(left)))
	}
	for _, l := range left {
		l.stop(severGraceful, textShuttingDown)
	}
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end) && liveCount() > 0; {
		time.Sleep(20 * time.Millisecond)
	}
}

func liveCount() int {
	sessionsMu.Lock()
	defer sessionsMu.Unlock()
	return len(sessions)
}

// severUpstream closes, with Close 320, every session relayed to addr: a
// member that left its farm with drain_removed on.
func severUpstream(addr string) {
	for _, l := range sessionsWhere(func(l *liveSession) bool { return l.info.Upstream == addr }) {
		l.stop(severGraceful, textMemberRemoved(addr))
	}
}

// severMoved ends, with Close 320, the session relayed over upstream,
// whose lookup key now routes elsewhere (drain_moved), and reports
// whether it was found.
func severMoved(upstream net.Conn, key string) bool {
	if upstream == nil {
		return false // a pooled session's lease has no connection of its own
	}
	found := sessionsWhere(func(l *liveSession) bool { return l.upstream == upstream })
	for _, l := range found {
		l.stop(severGraceful, "CONNECTION_FORCED - the route for "+key+" moved; reconnect to reach its new place")
	}
	return len(found) > 0
}

func severUpstreamSession(id uint64, addr string) {
	sessionsMu.Lock()
	l := sessions[id]
	sessionsMu.Unlock()
	if l != nil {
		l.stop(severGraceful, textMemberRemoved(addr))
	}
}

func textMemberRemoved(addr string) string {
	return "CONNECTION_FORCED - broker " + addr + " was removed from the proxy's farm"
}
