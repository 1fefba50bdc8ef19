package amqpreplay_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4amqp"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)

const (
	replayQueue    = "prelude.replay.q"
	replayExchange = "prelude.replay.x"
)

// captureSession runs session through a Caddy capturing it in both
// formats and returns the two files.
func captureSession(t *testing.T, body string, session func(url string)) (ndjson, pcapng string) {
	t.Helper()
	e2e.RequireRabbit(t)
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, e2e.Layer4(addr, map[string]any{
		"match":  []any{map[string]any{"amqp": map[string]any{}}},
		"handle": []any{map[string]any{"handler": "amqp", "default": map[string]any{"to": []string{e2e.RabbitAddr}}}},
	}))
	c.NoLeak(e2e.TestPassword)
	dir := t.TempDir()
	ndjson, pcapng = filepath.Join(dir, "cap.ndjson"), filepath.Join(dir, "cap.pcapng")
	var ids []string
	for _, spec := range []string{
		fmt.Sprintf(`{"file": %q, "format": "ndjson", "body": %q, "filter": {"connection_name": "replay-*"}}`, ndjson, body),
		fmt.Sprintf(`{"file": %q, "format": "pcapng", "body": %q, "filter": {"connection_name": "replay-*"}}`, pcapng, body),
	} {
		resp, err := http.Post("http://"+c.Admin+"/prelude/amqp/captures", "application/json", strings.NewReader(spec))
		if err != nil {
			t.Fatal(err)
		}
		var out struct{ ID string }
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &out) != nil {
			t.Fatalf("POST capture: %d %s", resp.StatusCode, b)
		}
		ids = append(ids, out.ID)
	}
	session(e2e.URL(addr, "/"))
	time.Sleep(200 * time.Millisecond) // the session's end reaches the capture
	for _, id := range ids {
		if code, body := c.Do(t, http.MethodDelete, "/prelude/amqp/captures/"+id); code != http.StatusOK {
			t.Fatalf("DELETE capture: %d %s", code, body)
		}
	}
	return ndjson, pcapng
}

func dialNamed(t *testing.T, url string) *amqp091.Connection {
	t.Helper()
	conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "replay-test"}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return conn
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// replayCmd runs `caddy amqp-replay` and returns its output and exit code.
func replayCmd(t *testing.T, bin string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"amqp-replay"}, args...)...)
	cmd.Env = append(os.Environ(), "AMQP_REPLAY_PASSWORD="+e2e.TestPassword)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return string(out), code
}

// queueBodies drains a queue and returns its messages' bodies.
func queueBodies(t *testing.T, vhost, queue string) []string {
	t.Helper()
	conn, err := amqp091.Dial(e2e.URL(e2e.RabbitAddr, vhost))
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	var out []string
	for {
		d, ok, err := ch.Get(queue, true)
		must(t, err)
		if !ok {
			return out
		}
		out = append(out, string(d.Body))
	}
}

func deleteQueue(t *testing.T, vhost, queue string) {
	t.Helper()
	conn, err := amqp091.Dial(e2e.URL(e2e.RabbitAddr, vhost))
	must(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	_, err = ch.QueueDelete(queue, false, false, false)
	must(t, err)
}

// A replay of a capture puts the same messages in the queue and reports
// no difference, from either format; a consumer on a server-named queue,
// its acks and its consumer tag are mapped to the new names and tags.
func TestReplayReproducesTheSession(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	ndjson, pcapng := captureSession(t, "full", func(url string) {
		conn := dialNamed(t, url)
		defer conn.Close()
		ch, err := conn.Channel()
		must(t, err)
		_, err = ch.QueueDeclare(replayQueue, true, false, false, false, nil)
		must(t, err)
		must(t, ch.Confirm(false))
		for i := range 3 {
			dc, err := ch.PublishWithDeferredConfirm("", replayQueue, false, false, amqp091.Publishing{Body: []byte(fmt.Sprint("replayed ", i))})
			must(t, err)
			dc.Wait()
		}
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		must(t, err)
		deliveries, err := ch.Consume(q.Name, "", false, false, false, false, nil)
		must(t, err)
		for i := range 2 {
			must(t, ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte(fmt.Sprint("own ", i))}))
			must(t, (<-deliveries).Ack(false))
		}
		must(t, ch.Close())
	})
	captured := queueBodies(t, "/", replayQueue)
	if len(captured) != 3 {
		t.Fatalf("the captured session left %v", captured)
	}
	target := "amqp://" + e2e.TestUser + "@" + e2e.RabbitAddr + "/"
	for _, file := range []string{ndjson, pcapng} {
		deleteQueue(t, "/", replayQueue)
		out, code := replayCmd(t, bin, "--target", target, file)
		if code != 0 || !strings.Contains(out, "the broker answered as captured") {
			t.Fatalf("%s: exit %d\n%s", filepath.Base(file), code, out)
		}
		if got := queueBodies(t, "/", replayQueue); strings.Join(got, ",") != strings.Join(captured, ",") {
			t.Errorf("%s: the replay left %v, the capture %v", filepath.Base(file), got, captured)
		}
		if strings.Contains(out, e2e.TestPassword) {
			t.Fatal("the report shows the password")
		}
	}
	deleteQueue(t, "/", replayQueue)
}

// Against a broker (here a vhost) that lacks the exchange the client
// published to, the replay reports the broker's 404 and exits 1.
func TestReplayReportsAMissingExchange(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	setup := func(vhost string, declare bool) {
		conn, err := amqp091.Dial(e2e.URL(e2e.RabbitAddr, vhost))
		must(t, err)
		defer conn.Close()
		ch, err := conn.Channel()
		must(t, err)
		if declare {
			must(t, ch.ExchangeDeclare(replayExchange, "fanout", false, true, false, false, nil))
		} else {
			_ = ch.ExchangeDelete(replayExchange, false, false)
		}
	}
	setup("/", true)
	setup(e2e.VhostB, false)
	ndjson, pcapng := captureSession(t, "none", func(url string) {
		conn := dialNamed(t, url)
		defer conn.Close()
		ch, err := conn.Channel()
		must(t, err)
		must(t, ch.Confirm(false))
		dc, err := ch.PublishWithDeferredConfirm(replayExchange, "", false, false, amqp091.Publishing{Body: []byte("x")})
		must(t, err)
		dc.Wait()
		must(t, ch.Close())
	})
	target := "amqp://" + e2e.TestUser + "@" + e2e.RabbitAddr + "/" + strings.ReplaceAll(e2e.VhostB, "/", "%2f")
	for _, file := range []string{ndjson, pcapng} {
		out, code := replayCmd(t, bin, "--target", target, file)
		if code != 1 || !strings.Contains(out, "404") || !strings.Contains(out, replayExchange) || !strings.Contains(out, "padded with zeros") {
			t.Fatalf("%s: exit %d, want 1 with the 404 and a note on the cut body:\n%s", filepath.Base(file), code, out)
		}
	}
	if out2, code := replayCmd(t, bin, "--target", strings.Replace(target, e2e.TestUser, e2e.TestUser+"-nobody", 1), ndjson); code != 1 || !strings.Contains(out2, "403") {
		t.Errorf("a refused login: exit %d\n%s", code, out2)
	}
}

// A truncated or corrupt capture is an error that names the file and the
// offset; exit status 2.
func TestReplayBadCaptures(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	dir := t.TempDir()
	corrupt := filepath.Join(dir, "corrupt.ndjson")
	first := `{"time":"2026-01-01T00:00:00Z","session":1,"event":"open"}` + "\n"
	must(t, os.WriteFile(corrupt, []byte(first+`{"session":1,"dir":"client","type":"meth`), 0o600))
	truncated := filepath.Join(dir, "truncated.pcapng")
	must(t, os.WriteFile(truncated, []byte{0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c}, 0o600))
	for file, want := range map[string]string{corrupt: fmt.Sprintf("offset %d", len(first)), truncated: "offset"} {
		out, code := replayCmd(t, bin, "--target", "amqp://u@127.0.0.1:1/", file)
		if code != 2 || !strings.Contains(out, filepath.Base(file)) || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d\n%s", filepath.Base(file), code, out)
		}
	}
}

// --session picks sessions; --speed 1 keeps the captured pace, 0 does
// not wait; an amqps target is reached through TLS with --ca.
func TestReplaySessionsSpeedAndTLS(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	const pause = 800 * time.Millisecond
	ndjson, _ := captureSession(t, "full", func(url string) {
		for i := range 2 {
			conn := dialNamed(t, url)
			ch, err := conn.Channel()
			must(t, err)
			q, err := ch.QueueDeclare("", false, true, true, false, nil)
			must(t, err)
			if i == 1 {
				time.Sleep(pause)
			}
			must(t, ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: []byte("paced")}))
			must(t, conn.Close())
		}
	})
	target := "amqp://" + e2e.TestUser + "@" + e2e.RabbitAddr + "/"
	out, code := replayCmd(t, bin, "--target", target, ndjson)
	if code != 0 || strings.Count(out, "the broker answered as captured") != 2 {
		t.Fatalf("all sessions: exit %d\n%s", code, out)
	}
	var ids []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == "session" {
			ids = append(ids, f[1])
		}
	}
	start := time.Now()
	out, code = replayCmd(t, bin, "--target", target, "--session", ids[1], ndjson)
	fast := time.Since(start)
	if code != 0 || strings.Count(out, "session ") != 1 || !strings.Contains(out, "session "+ids[1]+" ") {
		t.Fatalf("--session %s: exit %d\n%s", ids[1], code, out)
	}
	start = time.Now()
	out, code = replayCmd(t, bin, "--target", target, "--session", ids[1], "--speed", "1", ndjson)
	paced := time.Since(start)
	if code != 0 || paced < pause || fast >= pause {
		t.Fatalf("--speed 1 took %v, --speed 0 %v (the capture paused %v): exit %d\n%s", paced, fast, pause, code, out)
	}
	if out, code := replayCmd(t, bin, "--target", target, "--session", "999999", ndjson); code != 2 || !strings.Contains(out, "no session 999999") {
		t.Errorf("an unknown session: exit %d\n%s", code, out)
	}

	ca := e2e.NewTestCA(t)
	tlsAddr := e2e.StartTLSRelay(t, ca, e2e.RabbitAddr)
	tlsTarget := "amqps://" + e2e.TestUser + "@" + tlsAddr + "/"
	if out, code := replayCmd(t, bin, "--target", tlsTarget, "--ca", ca.CAFile, "--tls-server-name", "broker.test", ndjson); code != 0 {
		t.Errorf("amqps: exit %d\n%s", code, out)
	}
	if out, code := replayCmd(t, bin, "--target", tlsTarget, "--tls-server-name", "broker.test", ndjson); code != 2 || !strings.Contains(out, "certificate") {
		t.Errorf("amqps with an unknown CA: exit %d\n%s", code, out)
	}
}

// Direct reply-to: a responder's reply goes to the name the broker gave
// the request in the replay, not the captured one.
func TestReplayMapsDirectReplyTo(t *testing.T) {
	bin := e2e.BuildCaddy(t, "../..")
	ndjson, _ := captureSession(t, "full", func(url string) {
		conn := dialNamed(t, url)
		defer conn.Close()
		requester, err := conn.Channel()
		must(t, err)
		responder, err := conn.Channel()
		must(t, err)
		q, err := responder.QueueDeclare("", false, true, true, false, nil)
		must(t, err)
		requests, err := responder.Consume(q.Name, "", true, false, false, false, nil)
		must(t, err)
		replies, err := requester.Consume("amq.rabbitmq.reply-to", "", true, false, false, false, nil)
		must(t, err)
		for i := range 2 {
			must(t, requester.Publish("", q.Name, false, false, amqp091.Publishing{ReplyTo: "amq.rabbitmq.reply-to", Body: []byte(fmt.Sprint("request ", i))}))
			req := <-requests
			must(t, responder.Publish("", req.ReplyTo, false, false, amqp091.Publishing{Body: []byte("reply to " + string(req.Body))}))
			select {
			case r := <-replies:
				if string(r.Body) != fmt.Sprint("reply to request ", i) {
					t.Fatalf("reply %q", r.Body)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no reply")
			}
		}
	})
	out, code := replayCmd(t, bin, "--target", "amqp://"+e2e.TestUser+"@"+e2e.RabbitAddr+"/", ndjson)
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
}
