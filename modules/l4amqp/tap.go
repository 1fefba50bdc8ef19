package l4amqp

import (
	"fmt"
	"net"
	"path"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// Filter selects the sessions a capture or trace sees. Every key given must
// match (an empty key matches everything). Session keys are checked when a
// session is routed; the method keys (Exchange, RoutingKey, Queue) when a
// method names them: a session is selected by its first channel method
// that carries every method argument the filter names, each matching, and
// only the channels so selected (and channel 0) are kept from then on.
// Globs are path.Match patterns, as vhost routes are.
type Filter struct {
	VHost          string `json:"vhost,omitempty"`
	User           string `json:"user,omitempty"`
	Client         string `json:"client,omitempty"` // an IP or a CIDR
	Session        uint64 `json:"session,omitempty"`
	ConnectionName string `json:"connection_name,omitempty"`
	Exchange       string `json:"exchange,omitempty"`
	RoutingKey     string `json:"routing_key,omitempty"`
	Queue          string `json:"queue,omitempty"`

	client *net.IPNet
}

// compile checks the globs and parses the client network.
func (f *Filter) compile() error {
	for name, g := range map[string]string{"vhost": f.VHost, "user": f.User, "connection_name": f.ConnectionName,
		"exchange": f.Exchange, "routing_key": f.RoutingKey, "queue": f.Queue} {
		if _, err := path.Match(g, ""); err != nil {
			return fmt.Errorf("filter.%s: bad pattern %q: %v", name, g, err)
		}
	}
	if f.Client == "" {
		return nil
	}
	if _, n, err := net.ParseCIDR(f.Client); err == nil {
		f.client = n
		return nil
	}
	ip := net.ParseIP(f.Client)
	if ip == nil {
		return fmt.Errorf("filter.client: %q is neither an IP address nor a CIDR", f.Client)
	}
	bits := 8 * len(ip.To16())
	if ip4 := ip.To4(); ip4 != nil {
		ip, bits = ip4, 32
	}
	f.client = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
	return nil
}

func glob(pattern, s string) bool {
	if pattern == "" {
		return true
	}
	ok, _ := path.Match(pattern, s)
	return ok
}

// matchesSession checks the session keys.
func (f *Filter) matchesSession(m *sessionMeta) bool {
	if f.Session != 0 && f.Session != m.ID {
		return false
	}
	if f.client != nil {
		ta, ok := m.Client.(*net.TCPAddr)
		if !ok || !f.client.Contains(ta.IP) {
			return false
		}
	}
	return glob(f.VHost, m.VHost) && glob(f.User, m.User) && glob(f.ConnectionName, m.ConnectionName)
}

// methodLevel reports whether the filter selects channels by method.
func (f *Filter) methodLevel() bool {
	return f.Exchange != "" || f.RoutingKey != "" || f.Queue != ""
}

// matchesMethod reports whether a method frame carries every method key
// the filter names, each matching.
func (f *Filter) matchesMethod(payload []byte) bool {
	_, _, args, err := amqp.DecodeArgs(payload)
	if err != nil {
		return false
	}
	return argMatches(args, f.Exchange, "exchange", "source", "destination") &&
		argMatches(args, f.RoutingKey, "routing-key") &&
		argMatches(args, f.Queue, "queue")
}

func argMatches(args amqp.Table, pattern string, names ...string) bool {
	if pattern == "" {
		return true
	}
	for _, n := range names {
		if v, ok := args.Get(n); ok {
			if s, ok := v.(string); ok && glob(pattern, s) {
				return true
			}
		}
	}
	return false
}

// sink is where a tap's frames go: a capture file or a trace stream.
type sink interface {
	// open starts a selected session; its sinkSession receives the frames.
	open(m *sessionMeta, now time.Time) (sinkSession, error)
}

type sinkSession interface {
	frame(f *amqp.FrameInfo, now time.Time) error
	close(ended string, now time.Time) error
}

// tap is a running capture or trace: a filter, a body policy and a sink.
type tap struct {
	id     string
	filter Filter
	body   int // body bytes kept per body frame: -1 all
	sink   sink
	// maxSessions > 0 bounds the sessions selected.
	maxSessions int64

	sessions atomic.Int64
	frames   atomic.Uint64
	stopped  atomic.Bool
	failed   func(error) // stops the tap after a sink error
}

// tapSession is a tap's view of one session. Both relay directions call
// frame, so it locks.
type tapSession struct {
	tap  *tap
	meta *sessionMeta

	mu       sync.Mutex
	out      sinkSession // nil until the session is selected
	channels map[uint16]bool
	refused  bool // max_sessions was reached when the session was selected
}

// newTapSession returns the tap's view of a session its session keys
// match, selected at once unless the filter is method-level.
func (t *tap) newTapSession(m *sessionMeta) *tapSession {
	if t.stopped.Load() || !t.filter.matchesSession(m) {
		return nil
	}
	ts := &tapSession{tap: t, meta: m, channels: map[uint16]bool{}}
	if !t.filter.methodLevel() {
		ts.mu.Lock()
		ts.start(time.Now())
		ts.mu.Unlock()
		if ts.refused {
			return nil
		}
	}
	return ts
}

// start opens the session in the sink, within max_sessions.
func (ts *tapSession) start(now time.Time) {
	t := ts.tap
	if t.maxSessions > 0 && t.sessions.Add(1) > t.maxSessions {
		ts.refused = true
		return
	}
	if t.maxSessions == 0 {
		t.sessions.Add(1)
	}
	out, err := t.sink.open(ts.meta, now)
	if err != nil {
		t.failed(err)
		ts.refused = true
		return
	}
	ts.out = out
}

func (ts *tapSession) frame(f *amqp.FrameInfo, now time.Time) {
	t := ts.tap
	if t.stopped.Load() {
		return
	}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.refused {
		return
	}
	if t.filter.methodLevel() && !ts.selectedBy(f, now) {
		return
	}
	if ts.out == nil {
		return
	}
	if f.Type == amqp.FrameBody && t.body >= 0 && len(f.Payload) > t.body {
		c := *f // the decoder kept more for another tap
		c.Payload = c.Payload[:t.body]
		f = &c
	}
	t.frames.Add(1)
	if err := ts.out.frame(redactFrame(f), now); err != nil {
		t.failed(err)
	}
	if f.Type == amqp.FrameMethod && f.Class == amqp.ClassChannel && f.Method == amqp.MethodChannelCloseOk {
		delete(ts.channels, f.Channel)
	}
}

// selectedBy reports whether a method-level tap keeps f: channel 0 once
// the session is selected, and the channels a matching method selected.
func (ts *tapSession) selectedBy(f *amqp.FrameInfo, now time.Time) bool {
	if f.Channel == 0 {
		return ts.out != nil
	}
	if ts.channels[f.Channel] {
		return true
	}
	if f.Type != amqp.FrameMethod || f.Err != nil || !ts.tap.filter.matchesMethod(f.Payload) {
		return false
	}
	if ts.out == nil {
		ts.start(now)
		if ts.refused {
			return false
		}
	}
	ts.channels[f.Channel] = true
	return true
}

func (ts *tapSession) end(ended string, now time.Time) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.out == nil || ts.tap.stopped.Load() {
		return
	}
	if err := ts.out.close(ended, now); err != nil {
		ts.tap.failed(err)
	}
	ts.out = nil
}

// redactFrame replaces the new secret of a Connection.Update-Secret: like
// Start-Ok's response, it never reaches a capture or a trace.
func redactFrame(f *amqp.FrameInfo) *amqp.FrameInfo {
	if f.Type != amqp.FrameMethod || f.Class != amqp.ClassConnection || f.Method != amqp.MethodConnectionUpdateSecret {
		return f
	}
	_, _, args, err := amqp.DecodeArgs(f.Payload)
	reason := ""
	if err == nil {
		reason = args.String("reason")
	}
	payload := redactedUpdateSecret(reason)
	c := *f
	c.Payload, c.Size = payload, uint32(len(payload))
	return &c
}

// Taps: the running captures and traces, and the live sessions' watches so
// that a trace can join sessions already running.
var (
	tapsMu  sync.Mutex
	taps    = map[string]*tap{}
	watches = map[uint64]*watch{}
)

// selectTaps returns the views of the running taps that select a new session.
func selectTaps(m *sessionMeta) []*tapSession {
	tapsMu.Lock()
	defer tapsMu.Unlock()
	var out []*tapSession
	for _, t := range taps {
		if ts := t.newTapSession(m); ts != nil {
			out = append(out, ts)
		}
	}
	return out
}

func addWatch(w *watch) {
	tapsMu.Lock()
	watches[w.meta.ID] = w
	tapsMu.Unlock()
}

func removeWatch(w *watch) {
	tapsMu.Lock()
	delete(watches, w.meta.ID)
	tapsMu.Unlock()
}

// startTap registers t; with live, it also joins the live sessions that
// decode their frames (statistics on) and that it selects.
func startTap(t *tap, live bool) {
	tapsMu.Lock()
	defer tapsMu.Unlock()
	taps[t.id] = t
	if !live {
		return
	}
	for _, w := range watches {
		if ts := t.newTapSession(w.meta); ts != nil {
			w.attach(ts)
		}
	}
}

// stopTap unregisters t and detaches it from the live sessions.
func stopTap(t *tap) {
	t.stopped.Store(true)
	tapsMu.Lock()
	delete(taps, t.id)
	ws := make([]*watch, 0, len(watches))
	for _, w := range watches {
		ws = append(ws, w)
	}
	tapsMu.Unlock()
	for _, w := range ws {
		w.detach(t)
	}
}

// watchOf returns the watch of a live session.
func watchOf(id uint64) *watch {
	tapsMu.Lock()
	defer tapsMu.Unlock()
	return watches[id]
}
