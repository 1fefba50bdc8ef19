package l4amqp_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// startStrictBroker is a broker that real RabbitMQ cannot be made into for a
// test: it tunes frame_max to frameMax, then completes the handshake and
// answers Close with Close-Ok.
func startStrictBroker(t *testing.T, frameMax uint32) string {
	t.Helper()
	return e2e.ServeTCP(t, func(c net.Conn) { serveStrict(c, frameMax) })
}

func serveStrict(c net.Conn, frameMax uint32) {
	defer c.Close()
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(c, hdr); err != nil {
		return
	}
	send := func(m amqp.Method) { b, _ := amqp.AppendMethodFrame(nil, 0, m); _, _ = c.Write(b) }
	send(&amqp.Start{VersionMinor: 9, ServerProperties: amqp.Table{}, Mechanisms: "PLAIN AMQPLAIN", Locales: "en_US"})
	for {
		f, err := amqp.ReadFrame(c, 1<<20)
		if err != nil {
			return
		}
		m, err := amqp.ParseMethod(f.Payload)
		if err != nil {
			return
		}
		switch m.(type) {
		case *amqp.StartOk:
			send(&amqp.Tune{ChannelMax: 2047, FrameMax: frameMax, Heartbeat: 60})
		case *amqp.Open:
			send(&amqp.OpenOk{})
		case *amqp.Close:
			send(&amqp.CloseOk{})
			return
		}
	}
}

// rawClient connects to the proxy and sends the 0-9-1 header.
func rawClient(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func readMethod(t *testing.T, c net.Conn) amqp.Method {
	t.Helper()
	f, err := amqp.ReadFrame(c, 1<<20)
	if err != nil {
		t.Fatalf("reading a frame from the proxy: %v", err)
	}
	m, err := amqp.ParseMethod(f.Payload)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func expectClose(t *testing.T, c net.Conn, code uint16, text string) {
	t.Helper()
	for {
		m := readMethod(t, c)
		if cl, ok := m.(*amqp.Close); ok {
			if cl.ReplyCode != code || !strings.Contains(cl.ReplyText, text) {
				t.Fatalf("Close %d %q, want %d containing %q", cl.ReplyCode, cl.ReplyText, code, text)
			}
			b, _ := amqp.AppendMethodFrame(nil, 0, &amqp.CloseOk{})
			_, _ = c.Write(b)
			expectEOF(t, c)
			return
		}
	}
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	if n, err := io.Copy(io.Discard, c); err != nil || n != 0 {
		t.Fatalf("after Close the proxy sent %d more bytes (%v), want a clean close", n, err)
	}
}

func send(t *testing.T, c net.Conn, m amqp.Method) {
	t.Helper()
	b, err := amqp.AppendMethodFrame(nil, 0, m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

func plainStartOk() *amqp.StartOk {
	return &amqp.StartOk{ClientProperties: amqp.Table{}, Mechanism: "PLAIN",
		Response: amqp.Secret("\x00" + e2e.TestUser + "\x00" + e2e.TestPassword), Locale: "en_US"}
}

func TestHandshakeTimeout(t *testing.T) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, "*"))
	h["handshake_timeout"] = "300ms"
	_, addr := startProxy(t, h)
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	if _, ok := readMethod(t, c).(*amqp.Start); !ok {
		t.Fatal("no Connection.Start")
	}
	// Stall: never send Start-Ok.
	expectClose(t, c, 320, "handshake not completed within 300ms")
}

func TestOversizedFrameGets501(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	readMethod(t, c) // Start
	// Before Tune-Ok the limit is 4096 bytes (spec 4.2.3).
	big := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameMethod, Payload: make([]byte, 5000)})
	_, _ = c.Write(big[:7])
	expectClose(t, c, 501, "frame too large")
}

func TestUnexpectedFrameGets505(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	readMethod(t, c)
	_, _ = c.Write(amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameBody, Channel: 1, Payload: []byte("x")}))
	expectClose(t, c, 505, "expected connection.start-ok")
}

// TestHandshakeRefusals: the other Closes of the handshake table in
// docs/handlers/amqp.md — a wrong method, a mechanism the proxy does not
// offer, a PLAIN response it cannot read, a method it cannot parse.
func TestHandshakeRefusals(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	started := func() net.Conn {
		c := rawClient(t, addr)
		_, _ = c.Write(amqp.Header091)
		readMethod(t, c) // Start
		return c
	}
	c := started()
	send(t, c, &amqp.TuneOk{ChannelMax: 10, FrameMax: 4096})
	expectClose(t, c, 503, "COMMAND_INVALID - expected connection.start-ok, got connection.tune-ok")

	c = started()
	send(t, c, &amqp.StartOk{ClientProperties: amqp.Table{}, Mechanism: "EXTERNAL", Response: amqp.Secret(""), Locale: "en_US"})
	expectClose(t, c, 403, `mechanism "EXTERNAL" is not offered`)

	c = started()
	send(t, c, &amqp.StartOk{ClientProperties: amqp.Table{}, Mechanism: "PLAIN", Response: amqp.Secret("no NULs here"), Locale: "en_US"})
	expectClose(t, c, 403, "malformed PLAIN response")

	c = started()
	_, _ = c.Write(amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameMethod, Payload: []byte{0, 10, 0, 11, 0xff}}))
	expectClose(t, c, 502, "SYNTAX_ERROR")
}

func TestGarbageAfterHeaderGets501(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	readMethod(t, c)
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	expectClose(t, c, 501, "unknown frame type")
}

func TestWrongHeaderGetsOurHeader(t *testing.T) {
	// Without the matcher in front, the handler itself sees the bad header.
	e2e.RequireRabbit(t)
	addr := e2e.FreePort(t)
	e2e.StartCaddy(t, e2e.Layer4(addr, map[string]any{"handle": []any{handler(vhosts([]string{e2e.RabbitAddr}, "*"))}}))
	c := rawClient(t, addr)
	_, _ = c.Write([]byte("AMQP\x00\x01\x00\x00"))
	got, _ := io.ReadAll(c)
	if !bytes.Equal(got, amqp.Header091) {
		t.Fatalf("got %q, want the 0-9-1 header then close", got)
	}
}

func TestMatcherSendsOtherProtocolsElsewhere(t *testing.T) {
	e2e.RequireRabbit(t)
	addr := e2e.FreePort(t)
	amqp10 := map[string]any{
		"match":  []any{map[string]any{"amqp": map[string]any{"version": "1.0"}}},
		"handle": []any{map[string]any{"handler": "echo"}},
	}
	e2e.StartCaddy(t, e2e.Layer4(addr, route(handler(vhosts([]string{e2e.RabbitAddr}, "*"))), amqp10))
	// AMQP 1.0 (SASL header) goes to the echo route.
	c := rawClient(t, addr)
	h10 := []byte("AMQP\x03\x01\x00\x00")
	_, _ = c.Write(h10)
	got := make([]byte, len(h10))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, h10) {
		t.Fatalf("AMQP 1.0 client: got %q, %v; want its header echoed", got, err)
	}
	// A header sent one byte at a time still matches 0-9-1.
	c = rawClient(t, addr)
	for _, b := range amqp.Header091 {
		_, _ = c.Write([]byte{b})
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := readMethod(t, c).(*amqp.Start); !ok {
		t.Fatal("byte-by-byte 0-9-1 header did not reach the handler")
	}
	// HTTP matches neither route: the connection is closed without a reply.
	c = rawClient(t, addr)
	_, _ = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	if got, _ := io.ReadAll(c); len(got) != 0 {
		t.Fatalf("HTTP got %q", got)
	}
}

func TestClientCloseDuringHandshake(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	readMethod(t, c)
	send(t, c, &amqp.Close{ReplyCode: 200, ReplyText: "bye"})
	if _, ok := readMethod(t, c).(*amqp.CloseOk); !ok {
		t.Fatal("client Close not answered with Close-Ok")
	}
	expectEOF(t, c)
}

func TestTuneOkAboveOfferGets530(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	readMethod(t, c)
	send(t, c, plainStartOk())
	tune, ok := readMethod(t, c).(*amqp.Tune)
	if !ok {
		t.Fatal("no Tune")
	}
	send(t, c, &amqp.TuneOk{ChannelMax: tune.ChannelMax, FrameMax: tune.FrameMax + 1})
	expectClose(t, c, 530, "frame_max")
}

func TestStartAdvertisesCapabilities(t *testing.T) {
	_, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "*")))
	c := rawClient(t, addr)
	_, _ = c.Write(amqp.Header091)
	st, ok := readMethod(t, c).(*amqp.Start)
	if !ok {
		t.Fatal("no Start")
	}
	if st.Mechanisms != "PLAIN AMQPLAIN" {
		t.Errorf("mechanisms %q", st.Mechanisms)
	}
	if p := st.ServerProperties.String("product"); p != "Caddy Prelude" {
		t.Errorf("product %q", p)
	}
	v, _ := st.ServerProperties.Get("capabilities")
	caps, _ := v.(amqp.Table)
	for _, want := range []string{"publisher_confirms", "basic.nack", "consumer_cancel_notify",
		"connection.blocked", "authentication_failure_close", "per_consumer_qos",
		"exchange_exchange_bindings", "direct_reply_to", "consumer_priorities"} {
		if v, _ := caps.Get(want); v != true {
			t.Errorf("capability %s not advertised", want)
		}
	}
}

// TestPlaceholders runs the handler directly on an accepted socket and reads
// the placeholders it sets once the session is routed.
func TestPlaceholders(t *testing.T) {
	e2e.RequireRabbit(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	h := &l4amqp.Handler{Routes: []*l4amqp.Route{{VHosts: []string{"prelude-*"}, Farm: farm.Farm{To: []string{e2e.RabbitAddr}}}}}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer h.Cleanup()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	repl := make(chan *caddy.Replacer, 1)
	done := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		cx := layer4.WrapConnection(conn, nil, zap.NewNop())
		repl <- cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer)
		done <- h.Handle(cx, nil)
	}()
	client, err := amqp091.DialConfig(e2e.URL(ln.Addr().String(), e2e.VhostA),
		amqp091.Config{Properties: amqp091.Table{"connection_name": "placeholder-test"}})
	if err != nil {
		t.Fatal(err)
	}
	r := <-repl
	want := map[string]string{
		"l4.amqp.vhost": e2e.VhostA, "l4.amqp.user": e2e.TestUser, "l4.amqp.mechanism": "PLAIN",
		"l4.amqp.connection_name": "placeholder-test", "l4.amqp.upstream": e2e.RabbitAddr,
	}
	for k, v := range want {
		if got, _ := r.GetString(k); got != v {
			t.Errorf("{%s} = %q, want %q", k, got, v)
		}
	}
	_ = client.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestRelayOptionRefusesUnknownValues: relay is "loop" or "goroutines";
// anything else fails provisioning with an error naming the field.
func TestRelayOptionRefusesUnknownValues(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	for relay, ok := range map[string]bool{"": true, "loop": true, "goroutines": true, "epoll": false} {
		h := &l4amqp.Handler{Relay: relay, Default: &farm.Farm{To: []string{e2e.RabbitAddr}}}
		err := h.Provision(ctx)
		if err == nil {
			h.Cleanup()
		}
		if ok != (err == nil) || (err != nil && !strings.Contains(err.Error(), "relay")) {
			t.Errorf("relay %q: %v", relay, err)
		}
	}
}
