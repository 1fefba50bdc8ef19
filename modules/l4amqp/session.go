package l4amqp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/relay"
)

// Outcomes label connections in metrics and debug logs.
const (
	outcomeRouted        = "routed"
	outcomeUnrouted      = "unrouted"
	outcomeRefused       = "refused"     // the broker closed the handshake
	outcomeUnreachable   = "unreachable" // no member took the connection
	outcomeProtocolError = "protocol_error"
	outcomeTimeout       = "timeout"
	outcomeClientClosed  = "client_closed"
	outcomeLimited       = "limited"
	outcomePauseTimeout  = "pause_timeout"
)

// session is one client connection while the handler plays broker.
type session struct {
	h          *Handler
	cx         *layer4.Connection
	remote     net.Addr
	routeLabel string
	start      time.Time

	startOk  *amqp.StartOk
	tuneOk   *amqp.TuneOk
	open     *amqp.Open
	user     string
	offered  amqp.Tune
	frameMax uint32            // the largest frame the client may send now
	started  bool              // Connection.Start was sent: Close frames are understood
	out      io.Writer         // to the client, until the relay
	frames   *amqp.FrameReader // the client's frames after its header
	early    *earlyReplay
	held     bool // held by a pause of its vhost (an operator's name)
}

// closeError is a Connection.Close to send to the client. It carries either
// the proxy's own reason or the broker's Close, verbatim.
type closeError struct {
	amqp.Close
	outcome string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("connection.close %d %s", e.ReplyCode, e.ReplyText)
}

func closeWith(outcome string, code uint16, format string, args ...any) *closeError {
	return &closeError{Close: amqp.Close{ReplyCode: code, ReplyText: fmt.Sprintf(format, args...)}, outcome: outcome}
}

var (
	errClientClosed = errors.New("client closed the handshake")
	errBadHeader    = errors.New("not an AMQP 0-9-1 protocol header")
)

// run drives the session to its end and returns its outcome.
func (s *session) run() string {
	s.routeLabel = "unrouted"
	_ = s.cx.SetDeadline(time.Now().Add(time.Duration(s.h.HandshakeTimeout)))
	defer s.abandonEarly()
	err := s.clientHandshake()
	if err == nil {
		return s.routeAndRelay()
	}
	return s.fail(err)
}

// fail ends a session that will not be relayed, telling the client why in
// the protocol whenever the protocol allows it.
func (s *session) fail(err error) string {
	var ce *closeError
	switch {
	case errors.Is(err, errBadHeader):
		_, _ = s.cx.Write(amqp.Header091) // spec 4.2.2: answer with the supported header, then close
		return outcomeProtocolError
	case errors.Is(err, errClientClosed):
		return outcomeClientClosed
	case errors.As(err, &ce):
	case errors.Is(err, os.ErrDeadlineExceeded):
		ce = closeWith(outcomeTimeout, amqp.ReplyConnectionForced,
			"CONNECTION_FORCED - handshake not completed within %s", time.Duration(s.h.HandshakeTimeout))
	case errors.Is(err, amqp.ErrFrameTooLarge):
		ce = closeWith(outcomeProtocolError, amqp.ReplyFrameError, "FRAME_ERROR - %s", trimAMQP(err))
	case errors.Is(err, amqp.ErrMalformed):
		ce = closeWith(outcomeProtocolError, amqp.ReplyFrameError, "FRAME_ERROR - %s", trimAMQP(err))
	default: // the client went away or the socket failed
		return outcomeClientClosed
	}
	if s.started {
		s.sendClose(&ce.Close)
		// Unread client bytes (garbage after a protocol error) would turn
		// the close into a reset that can destroy the Close.
		relay.CloseAfterReply(s.cx.Conn, 500*time.Millisecond)
	}
	return ce.outcome
}

// sendClose sends Close and waits briefly for the client's Close-Ok, so that
// the client reads the Close before the socket goes away (spec 1.4.2.5).
func (s *session) sendClose(c *amqp.Close) { s.sendCloseOn(s.cx, c) }

// sendCloseOn is sendClose on conn, the client's connection.
func (s *session) sendCloseOn(conn net.Conn, c *amqp.Close) {
	if len(c.ReplyText) > 255 {
		c.ReplyText = c.ReplyText[:252] + "..."
	}
	frame, err := amqp.AppendMethodFrame(nil, 0, c)
	if err != nil {
		return
	}
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write(frame); err != nil {
		return
	}
	for {
		f, err := amqp.ReadFrame(conn, max(s.frameMax, amqp.FrameMinSize))
		if err != nil {
			return
		}
		if m, err := amqp.ParseMethod(f.Payload); err == nil && f.Type == amqp.FrameMethod {
			if _, id := m.MethodID(); id == amqp.MethodCloseOk || id == amqp.MethodClose {
				return
			}
		}
	}
}

// clientHandshake plays broker up to and including the client's Open.
func (s *session) clientHandshake() error {
	hdr := make([]byte, amqp.HeaderLen)
	if _, err := io.ReadFull(s.cx, hdr); err != nil {
		return err
	}
	if v, _ := amqp.ParseHeader(hdr); v != amqp.Version091 {
		return errBadHeader
	}
	s.startEarly()
	s.frameMax = amqp.FrameMinSize
	s.useClientIO()
	if err := s.send(s.h.startMethod()); err != nil {
		return err
	}
	s.started = true
	m, err := s.readMethod(amqp.MethodStartOk)
	if err != nil {
		return err
	}
	s.startOk = m.(*amqp.StartOk)
	if err := s.checkStartOk(); err != nil {
		return err
	}
	s.credited()
	s.offered = s.h.offeredTune()
	if err := s.send(&s.offered); err != nil {
		return err
	}
	if m, err = s.readMethod(amqp.MethodTuneOk); err != nil {
		return err
	}
	s.tuneOk = m.(*amqp.TuneOk)
	if err := checkTuneOk(s.offered, *s.tuneOk); err != nil {
		return err
	}
	if s.tuneOk.FrameMax != 0 {
		s.frameMax = s.tuneOk.FrameMax
	} else {
		s.frameMax = s.offered.FrameMax
	}
	if m, err = s.readMethod(amqp.MethodOpen); err != nil {
		return err
	}
	s.open = m.(*amqp.Open)
	return nil
}

// useClientIO reads and writes the client's handshake after its header on
// the socket itself when it is plain TCP (relay.RawIO), after whatever the
// listener had read ahead; else through the layer4 connection.
func (s *session) useClientIO() {
	raw := relay.RawIO(s.cx.Conn)
	if raw == s.cx.Conn {
		s.out, s.frames = s.cx, amqp.NewFrameReader(s.cx)
		return
	}
	var in io.Reader = raw
	if ahead := relay.Prefetched(s.cx); len(ahead) > 0 {
		in = io.MultiReader(bytes.NewReader(ahead), raw)
	}
	s.out, s.frames = raw, amqp.NewFrameReader(in)
}

func (s *session) checkStartOk() error {
	so := s.startOk
	if so.Mechanism != "PLAIN" && so.Mechanism != "AMQPLAIN" {
		return closeWith(outcomeProtocolError, amqp.ReplyAccessRefused,
			"ACCESS_REFUSED - mechanism %q is not offered; use PLAIN or AMQPLAIN", so.Mechanism)
	}
	user, err := amqp.Username(so.Mechanism, so.Response)
	if err != nil {
		return closeWith(outcomeProtocolError, amqp.ReplyAccessRefused, "ACCESS_REFUSED - malformed %s response", so.Mechanism)
	}
	s.user = user
	return nil
}

// checkTuneOk enforces spec 1.4.2.6: the client may lower, never raise, the
// offered limits, and frame-max is at least frame-min-size.
func checkTuneOk(offer amqp.Tune, got amqp.TuneOk) error {
	if above(got.ChannelMax, offer.ChannelMax) {
		return closeWith(outcomeProtocolError, amqp.ReplyNotAllowed,
			"NOT_ALLOWED - tune-ok channel_max %d is above the offered %d", got.ChannelMax, offer.ChannelMax)
	}
	if above(got.FrameMax, offer.FrameMax) {
		return closeWith(outcomeProtocolError, amqp.ReplyNotAllowed,
			"NOT_ALLOWED - tune-ok frame_max %d is above the offered %d", got.FrameMax, offer.FrameMax)
	}
	if got.FrameMax != 0 && got.FrameMax < amqp.FrameMinSize {
		return closeWith(outcomeProtocolError, amqp.ReplyNotAllowed,
			"NOT_ALLOWED - tune-ok frame_max %d is below the minimum %d", got.FrameMax, amqp.FrameMinSize)
	}
	return nil
}

// above reports whether a negotiated value exceeds a limit, where 0 means
// "no limit" on both sides.
func above[T uint16 | uint32](v, limit T) bool {
	return limit != 0 && (v == 0 || v > limit)
}

// readMethod reads the next method on channel 0, skipping heartbeats. A
// client Close is answered with Close-Ok and ends the session.
func (s *session) readMethod(want uint16) (amqp.Method, error) {
	for {
		f, err := s.frames.ReadFrame(s.frameMax)
		if err != nil {
			return nil, err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Type != amqp.FrameMethod || f.Channel != 0 {
			return nil, closeWith(outcomeProtocolError, amqp.ReplyUnexpectedFrame,
				"UNEXPECTED_FRAME - expected %s on channel 0, got a type %d frame on channel %d",
				amqp.MethodName(amqp.ClassConnection, want), f.Type, f.Channel)
		}
		m, err := amqp.ParseMethod(f.Payload)
		if err != nil {
			return nil, closeWith(outcomeProtocolError, amqp.ReplySyntaxError, "SYNTAX_ERROR - %s", trimAMQP(err))
		}
		class, id := m.MethodID()
		if class == amqp.ClassConnection && id == amqp.MethodClose {
			_ = s.send(&amqp.CloseOk{})
			return nil, errClientClosed
		}
		if class != amqp.ClassConnection || id != want {
			return nil, closeWith(outcomeProtocolError, amqp.ReplyCommandInvalid,
				"COMMAND_INVALID - expected %s, got %s", amqp.MethodName(amqp.ClassConnection, want), amqp.MethodName(class, id))
		}
		return m, nil
	}
}

func (s *session) send(m amqp.Method) error {
	b, err := amqp.AppendMethodFrame(nil, 0, m)
	if err != nil {
		return err
	}
	_, err = s.out.Write(b)
	return err
}

// routeAndRelay holds the client while its vhost is paused, picks the farm
// for its vhost, replays the handshake to one of its members and relays the
// session.
func (s *session) routeAndRelay() string {
	vhost := s.open.VirtualHost
	if err := s.hold(vhost); err != nil {
		return s.fail(err)
	}
	f, label, lim := s.h.route(vhost)
	s.routeLabel = label
	if f == nil {
		return s.fail(closeWith(outcomeUnrouted, amqp.ReplyNotAllowed,
			"NOT_ALLOWED - vhost %s is not routed by this proxy", vhost))
	}
	release, refusal := admit(s.h.Name+"\x00"+label, lim)
	if refusal != "" {
		return s.fail(closeWith(outcomeLimited, amqp.ReplyNotAllowed, "NOT_ALLOWED - vhost %s: %s", vhost, refusal))
	}
	defer release()
	s.setClientPlaceholders() // a lookup's key may use them
	if opts := s.h.poolOf(label); opts != nil {
		return s.runPooled(f, label, *opts)
	}
	lease, openOk, after, err := s.dialBroker(f)
	if err != nil {
		return s.fail(s.dialError(vhost, err))
	}
	defer lease.Release()
	defer lease.Conn.Close()
	upstream := lease.Member.Addr
	s.setPlaceholders(upstream) // before Open-Ok: the session is routed once the client sees it
	// Listed before the client sees Open-Ok, so that a connected client is
	// always in GET /prelude/amqp/sessions.
	l := &liveSession{client: s.cx.Conn, upstream: lease.Conn, info: Session{
		Client: s.remote.String(), VHost: vhost, User: s.user,
		ConnectionName: s.startOk.ClientProperties.String("connection_name"),
		Upstream:       upstream, Route: label, Started: time.Now(),
	}}
	l.info.ID = newSessionID()
	l.watch = newWatch(s.meta(l, lease.Conn.RemoteAddr(), openOk), s.h.statsOn(), s.h.StatsObjects > 0)
	defer list(l)()
	source := sourceKey(s.remote)
	s.countRouted(label, upstream, source)
	if _, err := s.out.Write(openOk); err != nil {
		s.uncountRouted(label, upstream, source)
		return outcomeRouted
	}
	_ = s.cx.SetDeadline(time.Time{})
	s.h.logger.Debug("amqp session routed",
		zap.String("remote", s.remote.String()), zap.String("upstream", upstream),
		zap.String("vhost", vhost), zap.String("user", s.user))
	s.h.emit(EventSessionOpen, map[string]any{"id": l.info.ID, "client": l.info.Client, "vhost": vhost, "user": s.user, "upstream": upstream})
	up, down, ended := s.relaySession(l, lim.dataRate, after)
	s.h.metrics.active.WithLabelValues(label).Dec()
	s.h.metrics.bytes.WithLabelValues(label, "upstream").Add(float64(up))
	s.h.metrics.bytes.WithLabelValues(label, "downstream").Add(float64(down))
	var msgs sessionMessages
	if l.watch != nil {
		l.watch.end(ended)
		msgs = l.watch.messages()
		foldRoute(label, msgs)
	}
	record(true, vhost, upstream, source, func(c *Counters) {
		c.Active--
		c.Closes[ended]++
		c.BytesIn += uint64(up)
		c.BytesOut += uint64(down)
		c.addMessages(msgs)
	})
	s.h.emit(EventSessionClose, map[string]any{"id": l.info.ID, "client": l.info.Client, "vhost": vhost,
		"upstream": upstream, "ended": ended, "bytes_in": up, "bytes_out": down})
	s.h.logger.Debug("amqp session ended",
		zap.String("remote", s.remote.String()), zap.String("upstream", upstream),
		zap.Int64("bytes_upstream", up), zap.Int64("bytes_downstream", down), zap.String("ended", ended))
	return outcomeRouted
}

// dialBroker replays the handshake to a member of f, or finishes the early
// replay already under way there. It returns the broker's Open-Ok frame and
// the bytes the broker sent after it that the replay has read.
func (s *session) dialBroker(f *farm.Farm) (lease *farm.Lease, openOk, after []byte, err error) {
	if e := s.useEarly(f); e != nil {
		return e.lease, e.openOk, e.after, e.err
	}
	ctx, cancel := s.h.dialContext()
	defer cancel()
	ctx = farm.WithLocalAddr(ctx, s.cx.LocalAddr())
	if repl, ok := s.cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); ok {
		ctx = farm.WithReplacer(ctx, repl)
	}
	lease, err = f.Dial(ctx, s.remote, func(ctx ctxT, m *farm.Member, conn net.Conn) error {
		var err error
		openOk, after, err = s.replay(ctx, m, conn, nil)
		return err
	})
	return lease, openOk, after, err
}

// hold keeps a client of a paused vhost after its Open until the vhost
// resumes (then the session is routed by the handler current at that time),
// answering its heartbeats, for at most pause_timeout.
func (s *session) hold(vhost string) error {
	wait, done := holdFor(vhost)
	if wait == nil {
		return nil
	}
	defer done()
	s.abandonEarly() // the route is taken at resume, perhaps by another config
	s.held = true
	timeout := time.Duration(s.h.PauseTimeout)
	s.h.logger.Debug("amqp client held: vhost paused", zap.String("remote", s.remote.String()), zap.String("vhost", vhost))
	_ = s.cx.SetDeadline(time.Time{})
	gone := make(chan error, 1)
	go func() { gone <- s.drainWhileHeld() }()
	var beat <-chan time.Time
	if hb := s.tuneOk.Heartbeat; hb > 0 {
		t := time.NewTicker(time.Duration(hb) * time.Second / 2)
		defer t.Stop()
		beat = t.C
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	heartbeat := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeartbeat})
	for {
		select {
		case <-wait:
			_ = s.cx.SetReadDeadline(time.Now())
			if err := <-gone; err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
			_ = s.cx.SetDeadline(time.Now().Add(time.Duration(s.h.HandshakeTimeout)))
			s.h = currentHandler(s.h)
			return nil
		case err := <-gone:
			return err
		case <-beat:
			_, _ = s.out.Write(heartbeat)
		case <-timer.C:
			_ = s.cx.SetReadDeadline(time.Now())
			<-gone
			return closeWith(outcomePauseTimeout, amqp.ReplyConnectionForced,
				"CONNECTION_FORCED - vhost %s is paused by an operator and was not resumed within %s", vhost, timeout)
		}
	}
}

// drainWhileHeld reads what a held client sends: heartbeats are dropped, a
// Close is answered and ends the session, anything else is a protocol error
// (the client must wait for Open-Ok).
func (s *session) drainWhileHeld() error {
	for {
		f, err := s.frames.ReadFrame(s.frameMax)
		if err != nil {
			return err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if m, perr := amqp.ParseMethod(f.Payload); perr == nil && f.Type == amqp.FrameMethod {
			if class, id := m.MethodID(); class == amqp.ClassConnection && id == amqp.MethodClose {
				_ = s.send(&amqp.CloseOk{})
				return errClientClosed
			}
		}
		return closeWith(outcomeProtocolError, amqp.ReplyUnexpectedFrame,
			"UNEXPECTED_FRAME - a frame before Connection.Open-Ok (the vhost is paused)")
	}
}

// list lists a routed session, and its watch for captures and traces,
// before the client sees Open-Ok, so that a connected client is always in
// GET /prelude/amqp/sessions. The returned function unlists it.
func list(l *liveSession) (unlist func()) {
	addSession(l)
	if l.watch != nil {
		addWatch(l.watch)
	}
	return func() {
		if l.watch != nil {
			removeWatch(l.watch)
		}
		removeSession(l.info.ID)
	}
}

// countRouted counts the session routed and active before the client can
// see Open-Ok: a client that is in is always in the metrics and the stats.
func (s *session) countRouted(label, upstream, source string) {
	s.routed(label, upstream)
	record(true, s.open.VirtualHost, upstream, source, func(c *Counters) { c.Active++ })
	s.h.metrics.active.WithLabelValues(label).Inc()
	s.h.metrics.handshake.WithLabelValues(label).Observe(time.Since(s.start).Seconds())
}

// uncountRouted ends a session whose Open-Ok could not be written: a client
// gone the moment it was routed.
func (s *session) uncountRouted(label, upstream, source string) {
	s.h.metrics.active.WithLabelValues(label).Dec()
	record(true, s.open.VirtualHost, upstream, source, func(c *Counters) { c.Active--; c.Closes[closeClientDropped]++ })
}

// meta describes the routed session to captures and traces.
func (s *session) meta(l *liveSession, broker net.Addr, openOk []byte) *sessionMeta {
	return &sessionMeta{ID: l.info.ID, Client: s.remote, Broker: broker, VHost: l.info.VHost, User: s.user,
		Mechanism: s.startOk.Mechanism, ConnectionName: l.info.ConnectionName, Route: l.info.Route,
		Started: l.info.Started, handshake: sync.OnceValue(func() []amqp.FrameInfo { return s.handshakeFrames(openOk) })}
}

// setClientPlaceholders publishes what the client's handshake said.
func (s *session) setClientPlaceholders() {
	repl, ok := s.cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	repl.Set("l4.amqp.vhost", s.open.VirtualHost)
	repl.Set("l4.amqp.vhost_label", amqp.VhostLabel(s.open.VirtualHost))
	repl.Set("l4.amqp.user", s.user)
	repl.Set("l4.amqp.mechanism", s.startOk.Mechanism)
	repl.Set("l4.amqp.connection_name", s.startOk.ClientProperties.String("connection_name"))
}

func (s *session) setPlaceholders(upstream string) {
	if repl, ok := s.cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("l4.amqp.upstream", upstream)
	}
}

// trimAMQP drops the package prefix from wire errors for Close texts.
func trimAMQP(err error) string {
	msg := err.Error()
	const p = "amqp: "
	if len(msg) > len(p) && msg[:len(p)] == p {
		return msg[len(p):]
	}
	return msg
}
