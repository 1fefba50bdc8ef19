package l4amqp_test

import (
	"encoding/binary"
	"net"
	"testing"

	"github.com/caddyprelude/prelude/amqp"
)

// rawAMQP is a client that writes whatever frames a test gives it, to play
// the misbehaving client that no real library would be.
type rawAMQP struct {
	t    *testing.T
	conn net.Conn
	fr   *amqp.FrameReader
}

// dialRaw connects through the proxy to vhost with the test user, up to
// and including Open-Ok; its Start-Ok carries props, if given.
func dialRaw(t *testing.T, addr, vhost string, props ...amqp.Field) *rawAMQP {
	t.Helper()
	c := rawClient(t, addr)
	w := &rawAMQP{t: t, conn: c, fr: amqp.NewFrameReader(c)}
	w.write(amqp.Header091)
	w.expectMethod(0, amqp.ClassConnection, amqp.MethodStart)
	so := plainStartOk()
	so.ClientProperties = append(so.ClientProperties, props...)
	send(t, c, so)
	w.expectMethod(0, amqp.ClassConnection, amqp.MethodTune)
	send(t, c, &amqp.TuneOk{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 0})
	send(t, c, &amqp.Open{VirtualHost: vhost})
	w.expectMethod(0, amqp.ClassConnection, amqp.MethodOpenOk)
	return w
}

func (w *rawAMQP) write(b []byte) {
	w.t.Helper()
	if _, err := w.conn.Write(b); err != nil {
		w.t.Fatalf("raw client write: %v", err)
	}
}

func (w *rawAMQP) method(ch, class, method uint16, args []byte) {
	w.t.Helper()
	p := binary.BigEndian.AppendUint16(nil, class)
	p = binary.BigEndian.AppendUint16(p, method)
	w.write(amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameMethod, Channel: ch, Payload: append(p, args...)}))
}

func (w *rawAMQP) header(ch uint16, size uint64) {
	w.t.Helper()
	p := binary.BigEndian.AppendUint16(nil, amqp.ClassBasic)
	p = append(p, 0, 0)
	p = binary.BigEndian.AppendUint64(p, size)
	w.write(amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeader, Channel: ch, Payload: append(p, 0, 0)}))
}

func (w *rawAMQP) body(ch uint16, s string) {
	w.t.Helper()
	w.write(amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameBody, Channel: ch, Payload: []byte(s)}))
}

// expectMethod reads frames until a method, which must be class.method on ch.
func (w *rawAMQP) expectMethod(ch, class, method uint16) amqp.Frame {
	w.t.Helper()
	for {
		f, err := w.fr.ReadFrame(1 << 20)
		if err != nil {
			w.t.Fatalf("raw client: waiting for %s: %v", amqp.FullMethodName(class, method), err)
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if f.Type != amqp.FrameMethod || f.Channel != ch || binary.BigEndian.Uint16(f.Payload) != class ||
			binary.BigEndian.Uint16(f.Payload[2:]) != method {
			w.t.Fatalf("raw client: got a type %d frame on channel %d (%x), want %s on %d", f.Type, f.Channel,
				f.Payload[:min(8, len(f.Payload))], amqp.FullMethodName(class, method), ch)
		}
		return f
	}
}

// expectClose reads until a Connection.Close and answers it.
func (w *rawAMQP) expectClose() *amqp.Close {
	w.t.Helper()
	for {
		f, err := w.fr.ReadFrame(1 << 20)
		if err != nil {
			w.t.Fatalf("raw client: waiting for Connection.Close: %v", err)
		}
		if f.Type != amqp.FrameMethod || f.Channel != 0 {
			continue
		}
		m, err := amqp.ParseMethod(f.Payload)
		if cl, ok := m.(*amqp.Close); ok && err == nil {
			send(w.t, w.conn, &amqp.CloseOk{})
			return cl
		}
	}
}

// publishArgs are basic.publish's arguments to the default exchange.
func publishArgs(queue string) []byte {
	b := []byte{0, 0, 0, byte(len(queue))}
	b = append(b, queue...)
	return append(b, 0)
}
