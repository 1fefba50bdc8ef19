package l4amqp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/relay"
)

type ctxT = context.Context

// brokerFrameMax bounds frames read from a broker during the replay. Brokers
// are trusted more than clients, but still bounded.
const brokerFrameMax = 1 << 20

// replay plays the client's handshake to a broker member: header, Start-Ok
// (with the proxy's client properties added), Tune-Ok and Open. It returns
// the broker's Open-Ok frame, to be forwarded to the client verbatim, and
// the bytes the broker sent after it that were read with it (they belong
// to the relay).
//
// An early replay (g not nil) waits at g's gates for the client's Start-Ok
// and for its Tune-Ok and Open.
//
// A broker Close at any step is answered with Close-Ok and returned through
// farm.Final, so the client gets the broker's own code and text. Any other
// failure (refused, reset, timeout, not AMQP) lets the farm try the next member.
func (s *session) replay(ctx context.Context, m *farm.Member, conn net.Conn, g *gates) (openOk, after []byte, err error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	rw := relay.RawIO(conn)
	frames := amqp.NewFrameReader(rw)
	if _, err := rw.Write(amqp.Header091); err != nil {
		return nil, nil, err
	}
	if _, err := readBrokerMethod(rw, frames, amqp.MethodStart); err != nil {
		return nil, nil, err
	}
	if err := g.wait(ctx, startOkGate); err != nil {
		return nil, nil, err
	}
	startOk, err := amqp.AppendMethodFrame(nil, 0, s.replayedStartOk())
	if err != nil {
		return nil, nil, err
	}
	if _, err := rw.Write(startOk); err != nil {
		return nil, nil, err
	}
	tm, err := readBrokerMethod(rw, frames, amqp.MethodTune)
	if err != nil {
		return nil, nil, err
	}
	tune := *tm.(*amqp.Tune)
	s.h.limits.learn(m.Addr, tune)
	if err := g.wait(ctx, openGate); err != nil {
		return nil, nil, err
	}
	if err := s.fitsBroker(m.Addr, tune); err != nil {
		return nil, nil, farm.Final(err)
	}
	out, _ := amqp.AppendMethodFrame(nil, 0, s.tuneOk)
	out, _ = amqp.AppendMethodFrame(out, 0, s.open)
	if _, err := rw.Write(out); err != nil {
		return nil, nil, err
	}
	ok, err := readBrokerMethod(rw, frames, amqp.MethodOpenOk)
	if err != nil {
		return nil, nil, err
	}
	_ = conn.SetDeadline(time.Time{})
	openOk, err = amqp.AppendMethodFrame(nil, 0, ok)
	return openOk, frames.Buffered(), err
}

// readBrokerMethod reads the broker's next connection method from frames,
// which must be want or Close (then Close-Ok goes to conn). A Close is acknowledged and comes back as a final error.
func readBrokerMethod(conn io.Writer, frames *amqp.FrameReader, want uint16) (amqp.Method, error) {
	for {
		f, err := frames.ReadFrame(brokerFrameMax)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("broker closed the connection while the proxy waited for %s",
					amqp.MethodName(amqp.ClassConnection, want))
			}
			return nil, err
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Type != amqp.FrameMethod {
			return nil, fmt.Errorf("broker sent a type %d frame while the proxy waited for %s",
				f.Type, amqp.MethodName(amqp.ClassConnection, want))
		}
		m, err := amqp.ParseMethod(f.Payload)
		if err != nil {
			return nil, err
		}
		class, id := m.MethodID()
		if class == amqp.ClassConnection && id == amqp.MethodClose {
			b, _ := amqp.AppendMethodFrame(nil, 0, &amqp.CloseOk{})
			_, _ = conn.Write(b)
			return nil, farm.Final(&closeError{Close: *m.(*amqp.Close), outcome: outcomeRefused})
		}
		if class != amqp.ClassConnection || id != want {
			return nil, fmt.Errorf("broker sent %s while the proxy waited for %s",
				amqp.MethodName(class, id), amqp.MethodName(amqp.ClassConnection, want))
		}
		return m, nil
	}
}

// fitsBroker checks that what the client negotiated with the proxy is within
// what the broker accepts. If it is not, the client must reconnect: the next
// offer already carries the broker's limits (learned above).
func (s *session) fitsBroker(addr string, t amqp.Tune) error {
	c := s.tuneOk
	var what string
	switch {
	case above(c.FrameMax, t.FrameMax):
		what = fmt.Sprintf("frame_max %d, below the %d", t.FrameMax, c.FrameMax)
	case above(c.ChannelMax, t.ChannelMax):
		what = fmt.Sprintf("channel_max %d, below the %d", t.ChannelMax, c.ChannelMax)
	default:
		return nil
	}
	return closeWith(outcomeRefused, amqp.ReplyConnectionForced,
		"CONNECTION_FORCED - broker %s allows %s this connection negotiated; reconnect to get the broker's limits", addr, what)
}

// replayedStartOk is the client's Start-Ok with client properties naming the
// real client and the proxy, so that the broker (and its management UI) shows
// who is connected. Any such properties the client sent are replaced.
// capabilities.authentication_failure_close is set so that RabbitMQ reports
// bad credentials with Close 403 rather than by dropping the socket.
func (s *session) replayedStartOk() *amqp.StartOk {
	so := *s.startOk
	props := make(amqp.Table, 0, len(so.ClientProperties)+3)
	var caps amqp.Table
	for _, f := range so.ClientProperties {
		switch f.Name {
		case propClientAddress, propProxy, propProxyAddress:
			continue
		case "capabilities":
			if t, ok := f.Value.(amqp.Table); ok {
				caps = t
				continue
			}
		}
		props = append(props, f)
	}
	caps = append(amqp.Table(nil), caps...).Set("authentication_failure_close", true)
	props = append(props,
		amqp.Field{Name: "capabilities", Value: caps},
		amqp.Field{Name: propClientAddress, Value: remoteString(s.remote)},
		amqp.Field{Name: propProxy, Value: productName + " " + version()},
		amqp.Field{Name: propProxyAddress, Value: remoteString(s.cx.LocalAddr())},
	)
	so.ClientProperties = props
	return &so
}

// Client properties the proxy adds to the replayed Start-Ok.
const (
	propClientAddress = "client_address" // the real client, host:port
	propProxy         = "proxy"          // product and version of the proxy
	propProxyAddress  = "proxy_address"  // the proxy listener the client reached
)

// probeBroker is the farms' active health check: a member is healthy when
// it answers the protocol header with Connection.Start (spec 4.2.2).
func probeBroker(_ context.Context, conn net.Conn) error {
	if _, err := conn.Write(amqp.Header091); err != nil {
		return err
	}
	if _, err := readBrokerMethod(conn, amqp.NewFrameReader(conn), amqp.MethodStart); err != nil {
		return fmt.Errorf("no Connection.Start: %w", err)
	}
	return nil
}
