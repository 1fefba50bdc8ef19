package amqp

import (
	"bytes"
	"flag"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

var update = flag.Bool("update", false, "rewrite testdata captures from a live amqp091-go handshake")

// handshake is one real client handshake: what amqp091-go wrote, and what the
// scripted server in front of it wrote.
type handshake struct{ client, server []byte }

// captureHandshake runs amqp091.Open against a server scripted with this
// package's encoder over net.Pipe, and records both directions.
func captureHandshake(t testing.TB, auth amqp091.Authentication, vhost string) handshake {
	t.Helper()
	cli, srv := net.Pipe()
	var got handshake
	var mu sync.Mutex
	done := make(chan error, 1)
	go func() { done <- scriptServer(srv, &got, &mu) }()
	cfg := amqp091.Config{
		Vhost:      vhost,
		SASL:       []amqp091.Authentication{auth},
		Heartbeat:  10 * time.Second,
		Properties: amqp091.Table{"connection_name": "capture"},
		Dial:       func(string, string) (net.Conn, error) { return cli, nil },
	}
	conn, err := amqp091.DialConfig("amqp://127.0.0.1/", cfg)
	if err != nil {
		t.Fatalf("amqp091 handshake against the scripted server: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("scripted server: %v", err)
	}
	// amqp091's Close waits for Close-Ok; cutting the pipe is enough here.
	_ = srv.Close()
	<-conn.NotifyClose(make(chan *amqp091.Error, 1))
	mu.Lock()
	defer mu.Unlock()
	return got
}

func scriptServer(c net.Conn, got *handshake, mu *sync.Mutex) error {
	rec := &recorder{r: c, mu: mu, buf: &got.client}
	hdr := make([]byte, HeaderLen)
	if _, err := io.ReadFull(rec, hdr); err != nil {
		return err
	}
	send := func(m Method) error {
		b, err := AppendMethodFrame(nil, 0, m)
		if err != nil {
			return err
		}
		mu.Lock()
		got.server = append(got.server, b...)
		mu.Unlock()
		_, err = c.Write(b)
		return err
	}
	if err := send(testStart()); err != nil {
		return err
	}
	for _, want := range []uint16{MethodStartOk} {
		if err := expectMethod(rec, want); err != nil {
			return err
		}
	}
	if err := send(&Tune{ChannelMax: 2047, FrameMax: 131072, Heartbeat: 60}); err != nil {
		return err
	}
	for _, want := range []uint16{MethodTuneOk, MethodOpen} {
		if err := expectMethod(rec, want); err != nil {
			return err
		}
	}
	if err := send(&OpenOk{}); err != nil {
		return err
	}
	// Drain whatever the client sends on close so that amqp091 returns.
	go func() { _, _ = io.Copy(io.Discard, c) }()
	return nil
}

func expectMethod(r io.Reader, want uint16) error {
	f, err := ReadFrame(r, 131072)
	if err != nil {
		return err
	}
	m, err := ParseMethod(f.Payload)
	if err != nil {
		return err
	}
	if _, id := m.MethodID(); id != want {
		return io.ErrUnexpectedEOF
	}
	return nil
}

type recorder struct {
	r   io.Reader
	mu  *sync.Mutex
	buf *[]byte
}

func (r *recorder) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.mu.Lock()
	*r.buf = append(*r.buf, p[:n]...)
	r.mu.Unlock()
	return n, err
}

func testStart() *Start {
	return &Start{
		VersionMajor: 0, VersionMinor: 9,
		ServerProperties: Table{
			{"product", "RabbitMQ"},
			{"capabilities", Table{{"publisher_confirms", true}, {"basic.nack", true}}},
		},
		Mechanisms: "PLAIN AMQPLAIN", Locales: "en_US",
	}
}

// loadCaptures returns the captured handshakes in testdata, rewriting them
// from a live amqp091-go handshake with -update.
func loadCaptures(t testing.TB) map[string]handshake {
	t.Helper()
	cases := map[string]amqp091.Authentication{
		"plain":    &amqp091.PlainAuth{Username: "guest", Password: "s3cret-pass"},
		"amqplain": &amqp091.AMQPlainAuth{Username: "guest", Password: "s3cret-pass"},
	}
	out := map[string]handshake{}
	for name, auth := range cases {
		cf := filepath.Join("testdata", "handshake-"+name+"-client.bin")
		sf := filepath.Join("testdata", "handshake-"+name+"-server.bin")
		if *update {
			h := captureHandshake(t, auth, "/orders")
			if err := os.WriteFile(cf, h.client, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(sf, h.server, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		c, err := os.ReadFile(cf)
		if err != nil {
			t.Fatalf("%v (run go test ./amqp -run TestCapture -update)", err)
		}
		s, err := os.ReadFile(sf)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = handshake{client: c, server: s}
	}
	return out
}

// TestCaptureIsCurrent checks that the committed captures still match what
// amqp091-go sends today (the client properties carry its version).
func TestCaptureIsCurrent(t *testing.T) {
	caps := loadCaptures(t)
	live := captureHandshake(t, &amqp091.PlainAuth{Username: "guest", Password: "s3cret-pass"}, "/orders")
	msgs, err := parseClientStream(live.client)
	if err != nil {
		t.Fatalf("live handshake: %v", err)
	}
	old, err := parseClientStream(caps["plain"].client)
	if err != nil {
		t.Fatalf("stored handshake: %v", err)
	}
	if len(msgs) != len(old) {
		t.Fatalf("live handshake has %d methods, stored %d", len(msgs), len(old))
	}
	if !bytes.Contains(live.client, []byte("s3cret-pass")) {
		t.Fatal("live capture lacks the password: the capture is not a real PLAIN handshake")
	}
}
