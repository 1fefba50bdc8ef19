package l4amqp

import (
	"context"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/relay"
)

// runPooled takes a client whose vhost block pools its broker connections:
// it finds or opens a pooled connection on a member of f (the broker
// checks a new connection's credentials and vhost; a client joining an
// open one must present the same credentials), answers Open-Ok and relays
// the client's channels until it leaves.
func (s *session) runPooled(f *farm.Farm, label string, opts PoolOptions) string {
	s.abandonEarly()
	vhost := s.open.VirtualHost
	var up *upConn
	ctx, cancel := s.h.dialContext()
	defer cancel()
	ctx = farm.WithLocalAddr(ctx, s.cx.LocalAddr())
	lease, err := f.DialShared(ctx, s.remote, func(ctx context.Context, m *farm.Member, connect farm.ConnectFunc) (net.Conn, error) {
		p := poolFor(poolKey{member: m.Addr, vhost: vhost, user: s.user}, label, opts)
		c, err := p.acquire(ctx, s, m, connect)
		if err != nil {
			return nil, err
		}
		up = c
		return nil, nil
	})
	if err != nil {
		return s.fail(s.dialError(vhost, err))
	}
	defer lease.Release()
	defer relay.Track()() // a graceful exit waits for this session too
	pc := newPoolClient(s, up, opts)
	l := &liveSession{client: s.cx.Conn, pooled: pc, info: Session{
		Client: s.remote.String(), VHost: vhost, User: s.user,
		ConnectionName: s.startOk.ClientProperties.String("connection_name"),
		Upstream:       up.member, Route: label, Started: time.Now(), Pool: up.name,
	}}
	l.info.ID = newSessionID()
	openOk, _ := amqp.AppendMethodFrame(nil, 0, &amqp.OpenOk{})
	// The watch is in place before the connection's reader can see pc.
	l.watch = newWatch(s.meta(l, up.conn.RemoteAddr(), openOk), s.h.statsOn(), s.h.StatsObjects > 0)
	pc.watch = l.watch
	blocked, ok := up.attach(pc)
	if !ok {
		return s.fail(closeWith(outcomeUnreachable, amqp.ReplyConnectionForced,
			"CONNECTION_FORCED - the pooled broker connection to %s closed as the client joined it; reconnect", up.member))
	}
	defer list(l)()
	source := sourceKey(s.remote)
	s.countRouted(label, up.member, source)
	if _, err := s.out.Write(openOk); err != nil {
		pc.leave()
		s.uncountRouted(label, up.member, source)
		return outcomeRouted
	}
	if blocked != "" && pc.wantsBlocked {
		b, _ := amqp.AppendMethodFrame(nil, 0, blockedMethod(blocked))
		pc.send(b)
	}
	_ = s.cx.SetDeadline(time.Time{})
	s.setPlaceholders(up.member)
	s.h.logger.Debug("amqp session routed to a pooled connection",
		zap.String("remote", s.remote.String()), zap.String("upstream", up.member),
		zap.String("vhost", vhost), zap.String("user", s.user), zap.String("pool_connection", up.name))
	s.h.emit(EventSessionOpen, map[string]any{"id": l.info.ID, "client": l.info.Client, "vhost": vhost, "user": s.user, "upstream": up.member})
	pc.run()
	s.h.metrics.active.WithLabelValues(label).Dec()
	in, out := pc.bytesIn.Load(), pc.bytesOut.Load()
	s.h.metrics.bytes.WithLabelValues(label, "upstream").Add(float64(in))
	s.h.metrics.bytes.WithLabelValues(label, "downstream").Add(float64(out))
	ended, _ := pc.ended.Load().(string)
	if ended == "" {
		ended = closeClientDropped
	}
	var msgs sessionMessages
	if l.watch != nil {
		l.watch.end(ended)
		msgs = l.watch.messages()
		foldRoute(label, msgs)
	}
	record(true, vhost, up.member, source, func(c *Counters) {
		c.Active--
		c.Closes[ended]++
		c.BytesIn += uint64(in)
		c.BytesOut += uint64(out)
		c.addMessages(msgs)
	})
	s.h.emit(EventSessionClose, map[string]any{"id": l.info.ID, "client": l.info.Client, "vhost": vhost,
		"upstream": up.member, "ended": ended, "bytes_in": in, "bytes_out": out})
	fields := []zap.Field{zap.String("remote", s.remote.String()), zap.String("upstream", up.member),
		zap.Int64("bytes_upstream", in), zap.Int64("bytes_downstream", out), zap.String("ended", ended)}
	if r, ok := pc.refusal.Load().(string); ok {
		fields = append(fields, zap.String("refused", r))
	}
	s.h.logger.Debug("amqp pooled session ended", fields...)
	return outcomeRouted
}

// dialError turns a farm's failure into the client's Close.
func (s *session) dialError(vhost string, err error) error {
	var nm *farm.NoMemberError
	var nr *farm.NoRouteError
	var rf *farm.RefusedError
	switch {
	case errors.As(err, &rf):
		return closeWith(outcomeRefused, amqp.ReplyAccessRefused, "ACCESS_REFUSED - vhost %s: %s", vhost, rf.Reason)
	case errors.As(err, &nr):
		return closeWith(outcomeUnrouted, amqp.ReplyNotAllowed, "NOT_ALLOWED - no route for vhost %s: %s", vhost, nr.Error())
	case errors.As(err, &nm):
		return closeWith(outcomeUnreachable, amqp.ReplyConnectionForced,
			"CONNECTION_FORCED - no broker reachable for vhost %s: %s", vhost, nm.Error())
	}
	return err
}

// blockedMethod is Connection.Blocked with reason, for a client joining a
// blocked connection.
func blockedMethod(reason string) amqp.Method {
	p, _ := amqp.EncodeArgs(amqp.ClassConnection, amqp.MethodConnectionBlocked, amqp.Table{{Name: "reason", Value: reason}})
	m, _ := amqp.ParseMethod(p)
	return m
}
