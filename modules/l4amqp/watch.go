package l4amqp

import (
	"net"
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// sessionMeta is what captures and traces know of a session besides its
// frames. It never holds credentials.
type sessionMeta struct {
	ID             uint64
	Client, Broker net.Addr
	VHost, User    string
	Mechanism      string
	ConnectionName string
	Route          string
	Started        time.Time
	// The handshake as the client saw it, for captures that start with the
	// session: Start-Ok's response is replaced by redactedResponse. Built
	// on first use: most sessions are never captured.
	handshake func() []amqp.FrameInfo
}

// watch looks inside one routed session after its handshake: it decodes
// both directions for the statistics observer (unless stats are off) and
// for the captures and traces that selected the session. A session that
// nothing looks at has no watch and pays only the frame tracking the
// relay always did.
type watch struct {
	meta *sessionMeta
	obs  *amqp.Observer // nil with stats off
	objs *objectTracker // nil unless the handler counts per exchange and queue
	dec  [2]amqp.Decoder
	taps atomic.Pointer[[]*tapSession]
}

// newWatch returns the session's watch, or nil when nothing looks at it.
// objects (with stats) also counts per exchange and queue.
func newWatch(meta *sessionMeta, stats, objects bool) *watch {
	taps := selectTaps(meta)
	if !stats && len(taps) == 0 {
		return nil
	}
	w := &watch{meta: meta}
	if stats {
		w.obs = amqp.NewObserver(nil)
	}
	if stats && objects {
		w.objs = newObjectTracker()
	}
	keep := 0
	for _, t := range taps {
		keep = widerBody(keep, t.tap.body)
	}
	for i := range w.dec {
		w.dec[i] = amqp.Decoder{Dir: amqp.Dir(i), KeepBody: keep, Emit: w.emit}
	}
	w.taps.Store(&taps)
	return w
}

// widerBody is the body policy that keeps the most: -1 is all.
func widerBody(a, b int) int {
	if a < 0 || b < 0 {
		return -1
	}
	return max(a, b)
}

func (w *watch) fromClient(b []byte) { w.dec[amqp.FromClient].Feed(b) }
func (w *watch) fromBroker(b []byte) { w.dec[amqp.FromBroker].Feed(b) }

func (w *watch) emit(f *amqp.FrameInfo) {
	if w.obs != nil {
		w.obs.Observe(f)
	}
	if w.objs != nil {
		w.objs.frame(f)
	}
	if taps := *w.taps.Load(); len(taps) > 0 {
		now := time.Now()
		for _, t := range taps {
			t.frame(f, now)
		}
	}
}

// end tells the taps that the session is over.
func (w *watch) end(ended string) {
	now := time.Now()
	for _, t := range *w.taps.Load() {
		t.end(ended, now)
	}
}

// attach adds a tap to a live session (a trace started after it).
func (w *watch) attach(t *tapSession) {
	for {
		old := w.taps.Load()
		next := append(append([]*tapSession(nil), *old...), t)
		if w.taps.CompareAndSwap(old, &next) {
			return
		}
	}
}

// detach removes the taps of a stopped capture or trace.
func (w *watch) detach(tp *tap) {
	for {
		old := w.taps.Load()
		next := make([]*tapSession, 0, len(*old))
		for _, t := range *old {
			if t.tap != tp {
				next = append(next, t)
			}
		}
		if len(next) == len(*old) || w.taps.CompareAndSwap(old, &next) {
			return
		}
	}
}

// clientSeen is what the client-to-broker copy shows its bytes to: nil
// when nothing watches the session.
func (w *watch) clientSeen() func([]byte) {
	if w == nil {
		return nil
	}
	return w.fromClient
}

// sessionMessages is what the statistics observer counted in a session.
type sessionMessages struct {
	Counts         amqp.Counts
	ChannelsOpened uint64
	ChannelCloses  map[uint16]uint64 // by reply code
	Blocked        time.Duration
}

// messages reads the session's statistics so far (zero with stats off).
func (w *watch) messages() sessionMessages {
	if w == nil || w.obs == nil {
		return sessionMessages{}
	}
	opened, closes := w.obs.ChannelStats()
	return sessionMessages{Counts: w.obs.Total.Read(), ChannelsOpened: opened, ChannelCloses: closes, Blocked: w.obs.Blocked()}
}

// channels lists the session's open channels (none with stats off).
func (w *watch) channels() []amqp.Channel {
	if w == nil || w.obs == nil {
		return []amqp.Channel{}
	}
	return w.obs.Channels()
}
