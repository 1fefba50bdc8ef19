package l4amqp_test

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// blockingBroker completes the handshake, opens every channel asked for,
// and sends Connection.Blocked once a channel is open and Unblocked when
// unblock is closed. RabbitMQ blocks publishers only under a resource
// alarm, which would block every other test's connections on the shared
// broker: this fake stands for it.
func blockingBroker(t *testing.T, unblock <-chan struct{}) string {
	t.Helper()
	return e2e.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		hdr := make([]byte, 8)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		send := func(ch uint16, m amqp.Method) { b, _ := amqp.AppendMethodFrame(nil, ch, m); _, _ = c.Write(b) }
		send(0, &amqp.Start{VersionMinor: 9, ServerProperties: amqp.Table{}, Mechanisms: "PLAIN", Locales: "en_US"})
		blocked := false
		for {
			f, err := amqp.ReadFrame(c, 1<<20)
			if err != nil {
				return
			}
			if f.Type != amqp.FrameMethod {
				continue
			}
			class, method := binary.BigEndian.Uint16(f.Payload), binary.BigEndian.Uint16(f.Payload[2:])
			switch {
			case class == 10 && method == amqp.MethodStartOk:
				send(0, &amqp.Tune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 0})
			case class == 10 && method == amqp.MethodOpen:
				send(0, &amqp.OpenOk{})
			case class == 10 && method == amqp.MethodClose:
				send(0, &amqp.CloseOk{})
				return
			case class == 20 && method == 10:
				send(f.Channel, &amqp.OtherMethod{Class: 20, Method: 11, Args: []byte{0, 0, 0, 0}})
				if !blocked {
					blocked = true
					send(0, &amqp.OtherMethod{Class: 10, Method: 60, Args: append([]byte{14}, "low on memory!"...)})
					go func() {
						<-unblock
						send(0, &amqp.OtherMethod{Class: 10, Method: 61})
					}()
				}
			}
		}
	})
}

// TestPoolBlockedReachesEveryClient: Connection.Blocked and Unblocked on a
// pooled connection reach every client that asked for them, including one
// that joins while the connection is blocked.
func TestPoolBlockedReachesEveryClient(t *testing.T) {
	unblock := make(chan struct{})
	brokerAddr := blockingBroker(t, unblock)
	v := vhosts([]string{brokerAddr}, e2e.VhostB)
	v["pool"] = map[string]any{}
	_, addr := startProxy(t, handler(v))
	var notes []chan amqp091.Blocking
	var conns []*amqp091.Connection
	for range 3 {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		conns = append(conns, conn)
		notes = append(notes, conn.NotifyBlocked(make(chan amqp091.Blocking, 2)))
	}
	channel(t, conns[0]) // the broker blocks the connection
	for i, n := range notes {
		select {
		case b := <-n:
			if !b.Active || b.Reason != "low on memory!" {
				t.Fatalf("client %d: %+v, want blocked for low memory", i, b)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("client %d: no Connection.Blocked", i)
		}
	}
	// A client joining a blocked connection is told at once (a library
	// listens only after its dial returns, so a raw client shows it).
	late := dialRaw(t, addr, e2e.VhostB, amqp.Field{Name: "capabilities", Value: amqp.Table{{Name: "connection.blocked", Value: true}}})
	late.expectMethod(0, amqp.ClassConnection, amqp.MethodConnectionBlocked)
	close(unblock)
	for i, n := range notes {
		select {
		case b := <-n:
			if b.Active {
				t.Fatalf("client %d: %+v, want unblocked", i, b)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("client %d: no Connection.Unblocked", i)
		}
	}
}
