package l4amqp

import (
	"context"
	"net"

	"github.com/caddyprelude/prelude/modules/farm"
)

// An earlyReplay is the broker side of the handshake, started as soon as
// the client's protocol header is in, when nothing the client sends later
// can change which farm it reaches or whether it may: the handler routes
// every vhost to its default farm and sets no connection limit. The dial
// and the broker's Start, authentication and Tune then overlap the
// client's own handshake with the proxy, and after the client's Open only
// Tune-Ok+Open and the broker's Open-Ok remain.
//
// The replay waits at two gates: before Start-Ok until the client's
// Start-Ok is in (credited), and after the broker's Tune until the session
// hands it the client's Tune-Ok and Open (use) or gives it up (abandon):
// a client that fails its handshake, a paused vhost, a route that changed.
type earlyReplay struct {
	farm   *farm.Farm
	cancel context.CancelFunc
	gates  gates
	done   chan struct{} // closed once lease, openOk, after and err are set
	lease  *farm.Lease
	openOk []byte
	after  []byte
	err    error
}

// gates hold an early replay until the client has sent what its next step
// replays. Closing a gate publishes the session's fields it guards.
type gates struct {
	startOk chan struct{} // s.startOk is set
	opened  chan struct{} // s.tuneOk and s.open are set
}

// wait blocks until gate is closed or ctx ends. Without gates (a replay
// after the client's Open) every gate is open.
func (g *gates) wait(ctx context.Context, gate func(*gates) chan struct{}) error {
	if g == nil {
		return nil
	}
	select {
	case <-gate(g):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func startOkGate(g *gates) chan struct{} { return g.startOk }
func openGate(g *gates) chan struct{}    { return g.opened }

// earlyFarm is the farm every session of h reaches, if it can be known
// before the client's Open: only a default farm whose members do not depend
// on the connection (no lookup, no placeholders in its addresses), no vhost
// blocks, no connection limits (a client a limit refuses must never reach
// a broker).
func (h *Handler) earlyFarm() *farm.Farm {
	if len(h.Routes) > 0 || h.Default == nil || h.Default.PerConnection() ||
		h.Limits != nil && (h.Limits.MaxConnections > 0 || h.Limits.rateN > 0) {
		return nil
	}
	return h.Default
}

// startEarly starts the broker side of the handshake if the farm is known.
func (s *session) startEarly() {
	f := s.h.earlyFarm()
	if f == nil {
		return
	}
	ctx, cancel := s.h.dialContext()
	ctx = farm.WithLocalAddr(ctx, s.cx.LocalAddr())
	e := &earlyReplay{farm: f, cancel: cancel, done: make(chan struct{}),
		gates: gates{startOk: make(chan struct{}), opened: make(chan struct{})}}
	s.early = e
	go func() {
		defer close(e.done)
		e.lease, e.err = f.Dial(ctx, s.remote, func(ctx ctxT, m *farm.Member, conn net.Conn) error {
			var err error
			e.openOk, e.after, err = s.replay(ctx, m, conn, &e.gates)
			return err
		})
	}()
}

// credited lets an early replay send the client's Start-Ok.
func (s *session) credited() {
	if s.early != nil {
		close(s.early.gates.startOk)
	}
}

// useEarly hands the client's Tune-Ok and Open to the early replay, if one
// dialed f, and returns it finished; any other is abandoned.
func (s *session) useEarly(f *farm.Farm) *earlyReplay {
	e := s.early
	if e == nil || e.farm != f {
		s.abandonEarly()
		return nil
	}
	s.early = nil
	close(e.gates.opened)
	<-e.done
	e.cancel()
	return e
}

// abandonEarly stops an early replay the session will not use and closes
// the broker connection it may have made.
func (s *session) abandonEarly() {
	e := s.early
	if e == nil {
		return
	}
	s.early = nil
	e.cancel()
	<-e.done
	if e.lease != nil {
		_ = e.lease.Conn.Close()
		e.lease.Release()
	}
}
