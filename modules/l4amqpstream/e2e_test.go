package l4amqpstream_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/l4amqpstream"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)

func TestMain(m *testing.M) {
	e2e.ServeGitProxyIfAsked()
	os.Exit(m.Run())
}

var seq atomic.Int64

func uniqueQueue() string {
	return fmt.Sprintf("prelude-tunnel-test-%d-%d", time.Now().UnixNano(), seq.Add(1))
}

// startEcho runs a TCP echo server: every byte comes back, and the echo
// half-closes when the client does.
func startEcho(t *testing.T) string {
	t.Helper()
	return e2e.ServeTCP(t, func(c net.Conn) {
		_, _ = io.Copy(c, c)
		_ = c.(*net.TCPConn).CloseWrite()
	})
}

// tunnelCaddyfile is the issue's example with its receiving side: port
// forwards into queue over the broker at brokerAddr, and the amqp/ server
// routes the streams to target.
func tunnelCaddyfile(port, queue, brokerAddr, target string) string {
	return fmt.Sprintf(`{
	amqp_brokers {
		main %s
	}
	layer4 {
		%s {
			route {
				amqp_tunnel %s %s
			}
		}
		amqp/%s@main {
			route {
				proxy %s
			}
		}
	}
}
`, e2e.URL(e2e.RabbitAddr, "/"), port, e2e.URL(brokerAddr, "/"), queue, queue, target)
}

func startTunnel(t *testing.T, target string) (c *e2e.Caddy, port, queue string) {
	t.Helper()
	e2e.RequireRabbit(t)
	port, queue = e2e.FreePort(t), uniqueQueue()
	c = e2e.StartCaddyfile(t, tunnelCaddyfile(port, queue, e2e.RabbitAddr, target))
	c.NoLeak(e2e.TestPassword)
	waitListening(t, port)
	return c, port, queue
}

// waitListening waits until a stream through port reaches the other side:
// the amqp/ listener starts consuming its queue asynchronously.
func waitListening(t *testing.T, port string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		conn, err := net.Dial("tcp", port)
		if err == nil {
			_, _ = conn.Write([]byte("x"))
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			b := make([]byte, 1)
			_, err = io.ReadFull(conn, b)
			_ = conn.Close()
			if err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tunnel on %s never carried a byte: %v", port, err)
		}
	}
}

// TestInteractiveAndBulk is the issue's "done when": an interactive
// session (many small round trips, like SSH keystrokes) and a bulk
// transfer both ways through the broker, configured by Caddyfile alone;
// nothing lost or duplicated. A config reload in the middle does not cut
// the session.
func TestInteractiveAndBulk(t *testing.T) {
	c, port, _ := startTunnel(t, startEcho(t))
	conn, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	var rtts []time.Duration
	for i := range 200 {
		if i == 100 {
			reloadSame(t, c)
		}
		line := fmt.Sprintf("keystroke %d\n", i)
		start := time.Now()
		if _, err := conn.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := r.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("round trip %d: %q, %v", i, got, err)
		}
		rtts = append(rtts, time.Since(start))
	}
	t.Logf("interactive round trip: first %v, last %v", rtts[0], rtts[len(rtts)-1])

	// The admin API and metrics see the live session on both sides.
	code, body := c.Get(t, "/prelude/tunnels")
	var live []l4amqpstream.Tunnel
	if err := json.Unmarshal([]byte(body), &live); code != 200 || err != nil {
		t.Fatalf("GET /prelude/tunnels: %d %s", code, body)
	}
	sides := map[string]bool{}
	for _, tun := range live {
		sides[tun.Side] = true
		if tun.Side == "dial" && tun.BytesSent == 0 {
			t.Errorf("dial side reports no bytes: %+v", tun)
		}
	}
	if !sides["dial"] || !sides["accept"] || strings.Contains(body, e2e.TestPassword) {
		t.Fatalf("tunnels: %s", body)
	}
	if c.MetricValue(t, `caddy_layer4_amqp_tunnel_streams_active{side="dial"}`) < 1 {
		t.Fatalf("metrics: %s", c.Metrics(t))
	}
	_ = conn.Close()

	// The bytes metrics count a bulk echo exactly, on both sides.
	series := func(side, dir string) string {
		return `caddy_layer4_amqp_tunnel_bytes_total{direction="` + dir + `",side="` + side + `"}`
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s:\n%s", what, c.Metrics(t))
			}
		}
	}
	// The totals include ended streams, so an ending stream changes nothing.
	before := map[string]float64{}
	for _, side := range []string{"dial", "accept"} {
		for _, dir := range []string{"sent", "received"} {
			before[series(side, dir)] = c.MetricValue(t, series(side, dir))
		}
	}
	const size = 64 << 20
	bulk(t, port, size)
	waitFor("every byte of the bulk echo counted on both sides", func() bool {
		for s, v := range before {
			if c.MetricValue(t, s)-v != size {
				return false
			}
		}
		return true
	})
}

// reloadSame pushes the running config again through the admin API.
func reloadSame(t *testing.T, c *e2e.Caddy) {
	t.Helper()
	_, cfg := c.Get(t, "/config/")
	var m map[string]any
	if err := json.Unmarshal([]byte(cfg), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "admin")
	delete(m, "logging")
	c.Reload(t, m)
}

// bulk sends size random bytes through the echo and checks that the same
// bytes come back, then EOF.
func bulk(t *testing.T, port string, size int64) {
	t.Helper()
	conn, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sent := sha256.New()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.MultiWriter(conn, sent), io.LimitReader(rand.Reader, size))
		_ = conn.(*net.TCPConn).CloseWrite()
		errc <- err
	}()
	got := sha256.New()
	n, err := io.Copy(got, conn)
	if werr := <-errc; werr != nil || err != nil {
		t.Fatalf("bulk: write %v, read %v", werr, err)
	}
	if n != size || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatalf("bulk: %d of %d bytes came back, digests equal: %v", n, size, bytes.Equal(sent.Sum(nil), got.Sum(nil)))
	}
	t.Logf("bulk: %d MB each way in %v", size>>20, time.Since(start).Round(time.Millisecond))
}

// TestGitCloneThroughTunnel clones over git:// through the broker.
func TestGitCloneThroughTunnel(t *testing.T) {
	e2e.RequireGit(t)
	base := t.TempDir()
	head := e2e.MakeBareRepo(t, filepath.Join(base, "project.git"), 30)
	daemon := e2e.StartGitDaemon(t, base)
	e2e.RequireRabbit(t)
	port, queue := e2e.FreePort(t), uniqueQueue()
	c := e2e.StartCaddyfile(t, tunnelCaddyfile(port, queue, e2e.RabbitAddr, daemon.Addr))
	c.NoLeak(e2e.TestPassword)
	waitForQueue(t, c, port)
	dst := filepath.Join(t.TempDir(), "clone")
	e2e.MustGit(t, "", "clone", "-q", "git://"+port+"/project.git", dst)
	if got := strings.TrimSpace(e2e.MustGit(t, dst, "rev-parse", "HEAD")); got != head {
		t.Fatalf("cloned HEAD %s, want %s", got, head)
	}
	e2e.MustGit(t, dst, "fsck", "--full")
}

// waitForQueue waits until the amqp/ listener consumes its queue, without
// sending bytes to a target that is not an echo.
func waitForQueue(t *testing.T, c *e2e.Caddy, port string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		before := c.MetricValue(t, `caddy_layer4_amqp_tunnel_streams_total{result="opened",side="dial"}`)
		conn, err := net.Dial("tcp", port)
		if err == nil {
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			_, _ = conn.Read(make([]byte, 1)) // EOF or reset once the handler decided
			_ = conn.Close()
		}
		if c.MetricValue(t, `caddy_layer4_amqp_tunnel_streams_total{result="opened",side="dial"}`) > before {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the amqp/ listener never accepted a stream")
		}
	}
}

// TestNoListenerResetsClient: with nobody on the queue the client's
// connection is reset at once, and the refusal is counted.
func TestNoListenerResetsClient(t *testing.T) {
	e2e.RequireRabbit(t)
	port := e2e.FreePort(t)
	t.Setenv("PRELUDE_TEST_BROKER_URL", e2e.URL(e2e.RabbitAddr, "/"))
	c := e2e.StartCaddyfile(t, fmt.Sprintf(`{
	layer4 {
		%s {
			route {
				amqp_tunnel {env.PRELUDE_TEST_BROKER_URL} %s
			}
		}
	}
}`, port, uniqueQueue()))
	c.NoLeak(e2e.TestPassword)
	const refused = `caddy_layer4_amqp_tunnel_streams_total{result="refused",side="dial"}`
	before := c.MetricValue(t, refused) // counters outlive a config load in one process
	conn, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read %v, want a reset", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refusal took %v", d)
	}
	if v := c.MetricValue(t, refused); v != before+1 {
		t.Fatalf("refused streams metric %v, want %v", v, before+1)
	}
}

// startSource runs a TCP server that sends data to each client, then
// closes.
func startSource(t *testing.T, data []byte) string {
	t.Helper()
	return e2e.ServeTCP(t, func(c net.Conn) { _, _ = c.Write(data) })
}

// TestBrokerCutMidStream cuts the tunnel side's broker connection while a
// client downloads: the client's read fails with a reset, never a clean but
// short stream, and every byte it did get is the right one.
func TestBrokerCutMidStream(t *testing.T) {
	e2e.RequireRabbit(t)
	data := make([]byte, 256<<20)
	_, _ = rand.Read(data[:1<<20])
	for i := 1 << 20; i < len(data); i *= 2 {
		copy(data[i:], data[:i])
	}
	relay := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	port, queue := e2e.FreePort(t), uniqueQueue()
	c := e2e.StartCaddyfile(t, tunnelCaddyfile(port, queue, relay.Addr, startSource(t, data)))
	c.NoLeak(e2e.TestPassword)
	waitForQueue(t, c, port)

	conn, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if got.Len() > 8<<20 {
			relay.Cut()
		}
		if err != nil {
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("client read %v after %d of %d bytes: a cut tunnel must reset the client", err, got.Len(), len(data))
			}
			t.Logf("client: %v after %d bytes", err, got.Len())
			break
		}
	}
	if !bytes.Equal(got.Bytes(), data[:got.Len()]) {
		t.Fatal("the bytes before the failure are not the ones sent")
	}
}

// TestIssueExampleAsWritten runs caddyfile/amqp-tunnel.caddytest — the
// issue's example with its receiving side, guest:guest URL and queue ssh-b
// as written — with the example addresses swapped for a free port and an
// echo service standing in for sshd.
func TestIssueExampleAsWritten(t *testing.T) {
	e2e.RequireRabbit(t)
	raw, err := os.ReadFile("../../caddyfile/amqp-tunnel.caddytest")
	if err != nil {
		t.Fatal(err)
	}
	cf, _, _ := strings.Cut(string(raw), "\n----------\n")
	port := e2e.FreePort(t)
	cf = strings.ReplaceAll(cf, "127.0.0.1:2222", port)
	cf = strings.ReplaceAll(cf, "127.0.0.1:22\n", startEcho(t)+"\n")
	c := e2e.StartCaddyfile(t, cf)
	c.NoLeak(":guest@")
	waitListening(t, port)
	bulk(t, port, 8<<20)
}

// TestTunnelOverAMQPS runs both sides over amqps:// with the broker's
// certificate checked against a CA file and a server name, the handler
// naming the broker of the amqp_brokers app.
func TestTunnelOverAMQPS(t *testing.T) {
	e2e.RequireRabbit(t)
	ca := e2e.NewTestCA(t)
	tlsAddr := e2e.StartTLSRelay(t, ca, e2e.RabbitAddr)
	url := strings.Replace(e2e.URL(tlsAddr, "/"), "amqp://", "amqps://", 1)
	port, queue := e2e.FreePort(t), uniqueQueue()
	// The URL, password included, comes from the environment: the config
	// Caddy keeps and returns on /config/ holds only the placeholder.
	t.Setenv("PRELUDE_TEST_AMQPS_URL", url)
	c := e2e.StartCaddyfile(t, fmt.Sprintf(`{
	amqp_brokers {
		secure {env.PRELUDE_TEST_AMQPS_URL} {
			tls {
				ca %s
				server_name broker.test
			}
			window 256KiB
		}
	}
	layer4 {
		%s {
			route {
				amqp_tunnel secure %s
			}
		}
		amqp/%s {
			route {
				proxy %s
			}
		}
	}
}`, ca.CAFile, port, queue, queue, startEcho(t)))
	c.NoLeak(e2e.TestPassword)
	waitListening(t, port)
	bulk(t, port, 8<<20)
	if _, cfg := c.Get(t, "/config/"); strings.Contains(cfg, e2e.TestPassword) || !strings.Contains(cfg, "{env.PRELUDE_TEST_AMQPS_URL}") {
		t.Fatalf("/config/ shows the broker password or lost the placeholder:\n%s", cfg)
	}
}

// TestInjectedMessagesAreDropped: someone with publish rights on the broker
// sends messages into both queues of a live tunnel stream. Each end drops
// them (they lack its secret token), counts them in /prelude/tunnels and
// caddy_layer4_amqp_tunnel_rejected_messages_total, and the stream carries
// the genuine bytes only.
func TestInjectedMessagesAreDropped(t *testing.T) {
	c, port, queue := startTunnel(t, startEcho(t))
	conn, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(conn)
	// This test's stream, both ends: streams of earlier tests may still be
	// ending (a cut one lasts until its keepalive_timeout).
	ours := func() []l4amqpstream.Tunnel {
		t.Helper()
		var all, out []l4amqpstream.Tunnel
		code, body := c.Get(t, "/prelude/tunnels")
		if err := json.Unmarshal([]byte(body), &all); code != 200 || err != nil {
			t.Fatalf("GET /prelude/tunnels: %d %s", code, body)
		}
		for _, tun := range all {
			if tun.Queue == queue {
				out = append(out, tun)
			}
		}
		if len(out) != 2 {
			t.Fatalf("GET /prelude/tunnels: %d ends of this test's stream, want 2: %+v", len(out), out)
		}
		return out
	}
	echo := func(line string) {
		t.Helper()
		if _, err := conn.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		if got, err := r.ReadString('\n'); err != nil || got != line {
			t.Fatalf("echo of %q: %q, %v", line, got, err)
		}
	}
	echo("before\n")
	live := ours()
	before := map[string]float64{}
	for _, side := range []string{"dial", "accept"} {
		before[side] = c.MetricValue(t, `caddy_layer4_amqp_tunnel_rejected_messages_total{side="`+side+`"}`)
	}
	attacker, err := amqp091.Dial(e2e.URL(e2e.RabbitAddr, "/"))
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	ch, err := attacker.Channel()
	if err != nil {
		t.Fatal(err)
	}
	for _, tun := range live {
		if err := ch.Publish("", tun.LocalQueue, false, false, amqp091.Publishing{Body: []byte("INJECTED\n")}); err != nil {
			t.Fatal(err)
		}
	}
	echo("after\n")
	for _, side := range []string{"dial", "accept"} {
		series := `caddy_layer4_amqp_tunnel_rejected_messages_total{side="` + side + `"}`
		for deadline := time.Now().Add(5 * time.Second); c.MetricValue(t, series) != before[side]+1; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s went from %v to %v, want one more", series, before[side], c.MetricValue(t, series))
			}
		}
	}
	for _, tun := range ours() {
		if tun.Rejected != 1 {
			t.Fatalf("after the injection, the %s end reports %d rejected messages, want 1", tun.Side, tun.Rejected)
		}
	}
}

// TestSlowTargetStallsTheWriter: flow control end to end. The target on
// the far side reads nothing for a second while a client writes 16 MiB
// into the tunnel; the dial side waits for the peer's window (counted in
// caddy_layer4_amqp_tunnel_window_stalls_total) instead of queueing the
// bytes in the broker, and once the target reads, every byte arrives in
// order.
func TestSlowTargetStallsTheWriter(t *testing.T) {
	const size = 16 << 20
	digest := make(chan []byte, 1)
	target := e2e.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		first := make([]byte, 1)
		if _, err := io.ReadFull(c, first); err != nil {
			return
		}
		if first[0] == 'x' { // waitListening's probe: echo it
			_, _ = c.Write(first)
			return
		}
		time.Sleep(time.Second) // the bulk: read nothing for a second
		h := sha256.New()
		h.Write(first)
		if n, _ := io.Copy(h, c); n != size-1 {
			digest <- nil
			return
		}
		digest <- h.Sum(nil)
	})
	c, port, _ := startTunnel(t, target)
	const stalls = `caddy_layer4_amqp_tunnel_window_stalls_total{side="dial"}`
	before := c.MetricValue(t, stalls)
	conn, err := net.Dial("tcp", port)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	data := make([]byte, size)
	_, _ = rand.Read(data)
	data[0] = 'B' // not the probe's byte
	if _, err := conn.Write(data); err != nil {
		t.Fatal(err)
	}
	_ = conn.(*net.TCPConn).CloseWrite()
	want := sha256.Sum256(data)
	select {
	case got := <-digest:
		if !bytes.Equal(got, want[:]) {
			t.Fatal("the slow target did not get the 16 MiB intact")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the slow target never got everything")
	}
	if got := c.MetricValue(t, stalls); got <= before {
		t.Fatalf("%s stayed at %v: the writer never waited for the window", stalls, got)
	}
}
