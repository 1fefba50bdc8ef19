package stream_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/amqp/stream"
	"github.com/caddyprelude/prelude/internal/e2e"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/net/nettest"
)

var queueSeq atomic.Int64

// uniqueQueue names a listener queue no other test uses.
func uniqueQueue(t testing.TB) string {
	return fmt.Sprintf("prelude-stream-test-%d-%d", time.Now().UnixNano(), queueSeq.Add(1))
}

// brokerConn opens a connection to the test broker (through addr, which
// may be a relay), closed at the end of the test.
func brokerConn(t testing.TB, addr string) *amqp.Connection {
	t.Helper()
	conn, err := amqp.Dial(e2e.URL(addr, "/"))
	if err != nil {
		t.Fatalf("connecting to RabbitMQ at %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// pipe is a dialed stream and its accepted peer.
type pipe struct {
	dialed, accepted *stream.Conn
	ln               *stream.Listener
}

// newPipe listens on a fresh queue over lconn, dials it over dconn and
// returns both ends.
func newPipe(t testing.TB, cfg stream.Config, dconn, lconn *amqp.Connection) pipe {
	t.Helper()
	queue := uniqueQueue(t)
	ln, err := cfg.NewListener(lconn, queue)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := cfg.DialAMQP(ctx, dconn, queue)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	a, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { _ = d.Close(); _ = a.Close() })
	return pipe{dialed: d.(*stream.Conn), accepted: a.(*stream.Conn), ln: ln}
}

func TestNetConnConformance(t *testing.T) {
	e2e.RequireRabbit(t)
	dconn, lconn := brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr)
	nettest.TestConn(t, func() (net.Conn, net.Conn, func(), error) {
		p := newPipe(t, stream.Config{}, dconn, lconn)
		stop := func() { _ = p.dialed.Close(); _ = p.accepted.Close(); _ = p.ln.Close() }
		return p.dialed, p.accepted, stop, nil
	})
}

// TestBulkBothWays sends 200 MB of random bytes each way at once and
// compares SHA-256 digests: nothing lost, duplicated or reordered.
func TestBulkBothWays(t *testing.T) {
	e2e.RequireRabbit(t)
	size := 200 << 20
	p := newPipe(t, stream.Config{}, brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr))
	var wg sync.WaitGroup
	type result struct {
		sent, got [32]byte
		n         int64
		err       error
	}
	run := func(w, r *stream.Conn, res *result) {
		defer wg.Done()
		var rerr error
		var got [32]byte
		var n int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			h := sha256.New()
			n, rerr = io.Copy(h, r)
			copy(got[:], h.Sum(nil))
		}()
		h := sha256.New()
		_, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(rand.Reader, int64(size)))
		if err == nil {
			err = w.CloseWrite()
		}
		copy(res.sent[:], h.Sum(nil))
		<-done
		res.err = errors.Join(err, rerr)
		res.got, res.n = got, n
	}
	var ab, ba result
	wg.Add(2)
	start := time.Now()
	go run(p.dialed, p.accepted, &ab) // dialed writes, accepted reads ...
	go run(p.accepted, p.dialed, &ba) // ... and the other way at the same time
	wg.Wait()
	elapsed := time.Since(start)
	if ab.err != nil || ba.err != nil {
		t.Fatalf("errors: %v / %v", ab.err, ba.err)
	}
	// ab.got is what the accepted end read: the dialed end's bytes.
	if ab.n != int64(size) || ba.n != int64(size) {
		t.Fatalf("read %d and %d bytes, want %d each", ab.n, ba.n, size)
	}
	if ab.sent != ab.got || ba.sent != ba.got {
		t.Fatalf("sha256 mismatch: dialed->accepted %x vs %x, accepted->dialed %x vs %x", ab.sent, ab.got, ba.sent, ba.got)
	}
	st := p.dialed.Stats()
	t.Logf("%d MB each way in %v (%.0f MB/s total); dialed end: %+v", size>>20, elapsed.Round(time.Millisecond),
		float64(2*size)/1e6/elapsed.Seconds(), st)
}

// TestSlowReaderBoundsWriter: a reader that never reads stops the writer
// once the window is full; neither end buffers more than its window.
func TestSlowReaderBoundsWriter(t *testing.T) {
	e2e.RequireRabbit(t)
	cfg := stream.Config{Window: 256 << 10, MessageSize: 16 << 10}
	p := newPipe(t, cfg, brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr))
	chunk := make([]byte, 32<<10)
	var written int
	_ = p.dialed.SetWriteDeadline(time.Now().Add(2 * time.Second))
	for {
		n, err := p.dialed.Write(chunk)
		written += n
		if err != nil {
			var nerr net.Error
			if !errors.As(err, &nerr) || !nerr.Timeout() {
				t.Fatalf("write: %v, want a timeout", err)
			}
			break
		}
		if written > 16*cfg.Window {
			t.Fatalf("wrote %d bytes into a stream nobody reads: no flow control", written)
		}
	}
	// The writer holds at most one window unacknowledged; the reader
	// accepted at most one window ahead of its (idle) application.
	if written > 2*cfg.Window {
		t.Fatalf("writer accepted %d bytes, want at most 2 windows (%d)", written, 2*cfg.Window)
	}
	if got := p.accepted.Stats().BytesReceived; got > uint64(cfg.Window) {
		t.Fatalf("reader buffered %d bytes, more than its window %d", got, cfg.Window)
	}
	if p.dialed.Stats().WindowStalls == 0 {
		t.Fatal("the writer never reported a window stall")
	}
	// A timed-out Write's unaccepted bytes never land: the reader gets
	// exactly what Write reported, then EOF.
	_ = p.dialed.SetWriteDeadline(time.Time{})
	if err := p.dialed.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, p.accepted)
	if err != nil || n != int64(written) {
		t.Fatalf("reader got %d bytes (%v), writer reported %d", n, err, written)
	}
}

func TestDialAbsentListenerRefusedFast(t *testing.T) {
	e2e.RequireRabbit(t)
	conn := brokerConn(t, e2e.RabbitAddr)
	start := time.Now()
	_, err := stream.DialAMQP(context.Background(), conn, uniqueQueue(t))
	elapsed := time.Since(start)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial error %v, want ECONNREFUSED", err)
	}
	if elapsed > time.Second {
		t.Fatalf("refusal took %v, want under a second", elapsed)
	}
	// The URL form too, and its error must not carry the password.
	_, err = stream.Dial(context.Background(), e2e.URL(e2e.RabbitAddr, "/"), uniqueQueue(t))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Dial(url) error %v, want ECONNREFUSED", err)
	}
	_, err = stream.Dial(context.Background(), "amqp://"+e2e.TestUser+":"+e2e.TestPassword+"@127.0.0.1:1/", "q")
	if err == nil || bytes.Contains([]byte(err.Error()), []byte(e2e.TestPassword)) {
		t.Fatalf("dial to a closed port: %v (must fail without the password)", err)
	}
}

// TestInjectedMessagesRejected publishes forged messages into both ends'
// queues from another connection: they are counted and dropped, and the
// stream carries exactly the genuine bytes.
func TestInjectedMessagesRejected(t *testing.T) {
	e2e.RequireRabbit(t)
	p := newPipe(t, stream.Config{}, brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr))
	attacker, err := brokerConn(t, e2e.RabbitAddr).Channel()
	if err != nil {
		t.Fatal(err)
	}
	forge := func(queue string, body []byte) {
		if err := attacker.Publish("", queue, false, false, amqp.Publishing{Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	forged := stream.ForgeData(0, []byte("INJECTED"))
	for _, q := range []string{p.dialed.LocalAddr().String(), p.accepted.LocalAddr().String()} {
		forge(q, forged)
		forge(q, []byte("garbage"))
	}
	if _, err := p.dialed.Write([]byte("genuine")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = p.accepted.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := p.accepted.Read(buf)
	if err != nil || string(buf[:n]) != "genuine" {
		t.Fatalf("read %q, %v; want the genuine bytes only", buf[:n], err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.accepted.Stats().Rejected < 2 || p.dialed.Stats().Rejected < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("rejected: accepted end %d, dialed end %d; want 2 each", p.accepted.Stats().Rejected, p.dialed.Stats().Rejected)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestListenersShareQueue: two listeners on one queue both get streams,
// and when one closes the other serves alone (standby).
func TestListenersShareQueue(t *testing.T) {
	e2e.RequireRabbit(t)
	queue := uniqueQueue(t)
	conn := brokerConn(t, e2e.RabbitAddr)
	var lns [2]net.Listener
	counts := make([]atomic.Int64, 2)
	for i := range lns {
		ln, err := stream.ListenAMQP(brokerConn(t, e2e.RabbitAddr), queue)
		if err != nil {
			t.Fatal(err)
		}
		lns[i] = ln
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				counts[i].Add(1)
				go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
			}
		}()
	}
	echo := func() {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := stream.DialAMQP(ctx, conn, queue)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = c.(*stream.Conn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "ping" {
			t.Fatalf("echo %q, %v", got, err)
		}
	}
	for range 20 {
		echo()
	}
	if counts[0].Load() == 0 || counts[1].Load() == 0 {
		t.Fatalf("streams per listener %d/%d: the queue was not shared", counts[0].Load(), counts[1].Load())
	}
	_ = lns[0].Close()
	before := counts[1].Load()
	for range 5 {
		echo()
	}
	if counts[1].Load() != before+5 {
		t.Fatalf("standby listener took %d of 5 streams", counts[1].Load()-before)
	}
	_ = lns[1].Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := stream.DialAMQP(ctx, conn, queue); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after both listeners closed: %v, want ECONNREFUSED", err)
	}
}

func TestHalfClose(t *testing.T) {
	e2e.RequireRabbit(t)
	p := newPipe(t, stream.Config{}, brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr))
	go func() {
		req, err := io.ReadAll(p.accepted) // until the dialer's FIN
		if err != nil {
			return
		}
		_, _ = p.accepted.Write(append([]byte("got "), req...))
		_ = p.accepted.Close()
	}()
	if _, err := p.dialed.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := p.dialed.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.dialed.Write([]byte("more")); err == nil {
		t.Fatal("Write after CloseWrite succeeded")
	}
	_ = p.dialed.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := io.ReadAll(p.dialed)
	if err != nil || string(resp) != "got request" {
		t.Fatalf("response %q, %v", resp, err)
	}
	select {
	case <-p.dialed.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a stream finished both ways did not end")
	}
}

// TestBrokerConnectionCut cuts the dialer's broker connection mid-stream:
// both ends get an error, and what the reader got before it is an exact
// prefix of what was written.
func TestBrokerConnectionCut(t *testing.T) {
	e2e.RequireRabbit(t)
	relay := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	cfg := stream.Config{Keepalive: 200 * time.Millisecond}
	p := newPipe(t, cfg, brokerConn(t, relay.Addr), brokerConn(t, e2e.RabbitAddr))
	data := make([]byte, 64<<20)
	_, _ = rand.Read(data)
	writeErr := make(chan error, 1)
	go func() {
		_, err := p.dialed.Write(data)
		writeErr <- err
	}()
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	var readErr error
	cut := false
	for {
		n, err := p.accepted.Read(buf)
		got.Write(buf[:n])
		if !cut && got.Len() > 4<<20 {
			relay.Cut()
			cut = true
		}
		if err != nil {
			readErr = err
			break
		}
	}
	if readErr == io.EOF {
		t.Fatalf("the reader saw a clean EOF after %d bytes: a cut stream must fail", got.Len())
	}
	if !bytes.Equal(got.Bytes(), data[:got.Len()]) {
		t.Fatal("bytes before the failure are not a prefix of what was written")
	}
	select {
	case err := <-writeErr:
		if err == nil {
			t.Fatal("the writer saw no error")
		}
		t.Logf("reader: %v after %d bytes; writer: %v", readErr, got.Len(), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the writer did not notice the cut")
	}
}

// TestKeepaliveNoticesSilentPeer freezes the path between the dialer and
// the broker (nothing closes): the accepted end fails within the
// keepalive timeout instead of waiting forever in Read.
func TestKeepaliveNoticesSilentPeer(t *testing.T) {
	e2e.RequireRabbit(t)
	relay := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	cfg := stream.Config{Keepalive: 100 * time.Millisecond, KeepaliveTimeout: 500 * time.Millisecond}
	p := newPipe(t, cfg, brokerConn(t, relay.Addr), brokerConn(t, e2e.RabbitAddr))
	time.Sleep(300 * time.Millisecond) // keepalives flow while idle: no failure
	relay.Freeze()
	start := time.Now()
	_, err := p.accepted.Read(make([]byte, 1))
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("read error %v, want a keepalive timeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("noticed after %v, want about the 500ms keepalive timeout", d)
	}
	relay.Cut() // let the frozen connection close quickly
}

// TestCloseUnblocksRead: Close returns at once and a pending Read fails.
func TestCloseUnblocksRead(t *testing.T) {
	e2e.RequireRabbit(t)
	p := newPipe(t, stream.Config{}, brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr))
	errc := make(chan error, 1)
	go func() { _, err := p.dialed.Read(make([]byte, 1)); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	_ = p.dialed.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("read after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Close did not unblock Read")
	}
	// The peer learns: EOF (Close sent a FIN), then its writes fail.
	_ = p.accepted.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.accepted.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read %v, want EOF", err)
	}
}

// TestLostPublishesRetransmitted drops every 5th data message on its first
// send (a broker losing publishes): go-back-N retransmission still delivers
// every byte exactly once, in order.
func TestLostPublishesRetransmitted(t *testing.T) {
	e2e.RequireRabbit(t)
	cfg := stream.LossyConfig(stream.Config{RetransmitTimeout: 200 * time.Millisecond}, 5)
	p := newPipe(t, cfg, brokerConn(t, e2e.RabbitAddr), brokerConn(t, e2e.RabbitAddr))
	data := make([]byte, 8<<20)
	_, _ = rand.Read(data)
	go func() {
		_, _ = p.dialed.Write(data)
		_ = p.dialed.CloseWrite()
	}()
	got, err := io.ReadAll(p.accepted)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes (%v), want the %d written, byte-exact", len(got), err, len(data))
	}
	st := p.dialed.Stats()
	if st.Retransmits == 0 {
		t.Fatalf("no retransmission recorded: %+v", st)
	}
	if p.accepted.Stats().Duplicates == 0 {
		t.Fatalf("the receiver saw no out-of-order data to drop: %+v", p.accepted.Stats())
	}
	t.Logf("sender %+v", st)
}

// TestAMQPS dials and listens over amqps:// (TLS to the broker's port),
// verifying the broker's certificate against a test CA.
func TestAMQPS(t *testing.T) {
	e2e.RequireRabbit(t)
	ca := e2e.NewTestCA(t)
	addr := e2e.StartTLSRelay(t, ca, e2e.RabbitAddr)
	url := strings.Replace(e2e.URL(addr, "/"), "amqp://", "amqps://", 1)
	cfg := stream.Config{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}
	queue := uniqueQueue(t)
	ln, err := cfg.Listen(url, queue)
	if err != nil {
		t.Fatalf("listen over amqps: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cfg.Dial(ctx, url, queue)
	if err != nil {
		t.Fatalf("dial over amqps: %v", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("over tls")); err != nil {
		t.Fatal(err)
	}
	_ = c.(*stream.Conn).CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "over tls" {
		t.Fatalf("echo %q, %v", got, err)
	}
	// An unknown CA is refused, and the error does not carry the password.
	_, err = stream.Config{}.Dial(ctx, url, queue)
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), e2e.TestPassword) {
		t.Fatalf("dial with the system roots: %v; want a certificate error without the password", err)
	}
}

// TestListenerLifecycle covers the listener's own edges against the real
// broker: the URL entry points (Listen, Dial) carry a stream; malformed
// connect requests are rejected and counted; a stream the listener
// established but nobody accepted is reset when the listener closes; and
// a listener whose broker connection is cut says so from Accept.
func TestListenerLifecycle(t *testing.T) {
	e2e.RequireRabbit(t)
	url := e2e.URL(e2e.RabbitAddr, "/")
	queue := uniqueQueue(t)
	ln, err := stream.Listen(url, queue)
	if err != nil {
		t.Fatalf("Listen: %v", err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d, err := stream.Dial(ctx, url, queue)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer d.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if _, err := d.Write([]byte("over the URL entry points")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = a.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := io.ReadAtLeast(a, buf, 25); err != nil || string(buf[:n]) != "over the URL entry points" {
		t.Fatalf("accepted end read %q, %v", buf[:n], err)
	}
	_ = a.Close()

	// Malformed connect requests: garbage, and a connect without reply_to.
	attacker, err := brokerConn(t, e2e.RabbitAddr).Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []amqp.Publishing{{Body: []byte("garbage")}, {Body: stream.ForgeConnect()}} {
		if err := attacker.Publish("", queue, false, false, p); err != nil {
			t.Fatal(err)
		}
	}
	l := ln.(*stream.Listener)
	for deadline := time.Now().Add(5 * time.Second); l.Rejected() < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("rejected %d connect requests, want 2", l.Rejected())
		}
	}

	// Established, never accepted, then the listener closes: reset.
	pending, err := stream.Dial(ctx, url, queue)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer pending.Close()
	_ = ln.Close()
	_ = pending.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pending.Read(buf); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("a stream never accepted read %v after its listener closed, want ECONNRESET", err)
	}

	// The broker connection under a listener is cut: Accept says so.
	relay := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	cut, err := stream.ListenAMQP(brokerConn(t, relay.Addr), uniqueQueue(t))
	if err != nil {
		t.Fatal(err)
	}
	defer cut.Close()
	accepted := make(chan error, 1)
	go func() { _, err := cut.Accept(); accepted <- err }()
	relay.Cut()
	select {
	case err := <-accepted:
		if err == nil || errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "broker connection lost") {
			t.Fatalf("Accept after the broker connection was cut: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still waiting after the broker connection was cut")
	}
}
