package l4amqp_test

import (
	"bufio"
	"bytes"
	"encoding/base64"
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

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// line is one NDJSON line of a capture or trace.
type line struct {
	Session  uint64         `json:"session"`
	Event    string         `json:"event"`
	Dir      string         `json:"dir"`
	Channel  uint16         `json:"channel"`
	Type     string         `json:"type"`
	Method   string         `json:"method"`
	Args     map[string]any `json:"args"`
	Props    map[string]any `json:"properties"`
	BodySize uint64         `json:"body_size"`
	Body     string         `json:"body"`
	Raw      []byte         `json:"raw"`
	Lines    uint64         `json:"lines"`
	User     string         `json:"user"`
	VHost    string         `json:"vhost"`
}

func readLines(t *testing.T, b []byte) []line {
	t.Helper()
	var out []line
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not a JSON line: %v\n%s", err, sc.Text())
		}
		out = append(out, l)
	}
	return out
}

// startCapture POSTs a capture and returns its id.
func startCapture(t *testing.T, c *e2e.Caddy, spec string) string {
	t.Helper()
	code, body := post(t, c, "/prelude/amqp/captures", spec)
	if code != http.StatusCreated {
		t.Fatalf("POST captures %s: %d %s", spec, code, body)
	}
	var out struct{ ID string }
	if err := json.Unmarshal([]byte(body), &out); err != nil || out.ID == "" {
		t.Fatalf("POST captures: %s", body)
	}
	return out.ID
}

func post(t *testing.T, c *e2e.Caddy, path, body string) (int, string) {
	t.Helper()
	resp, err := http.Post("http://"+c.Admin+path, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scenario is what the capture must hold: it declares an exchange and a
// server-named queue, publishes three messages with confirms and one
// mandatory unroutable, consumes, acks, nacks and rejects, and publishes
// one more in a transaction.
func scenario(t *testing.T, url string) {
	t.Helper()
	conn, err := amqp091.DialConfig(url, amqp091.Config{Properties: amqp091.Table{"connection_name": "capture-e2e"}})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	mustOK(t, err)
	mustOK(t, ch.ExchangeDeclare("prelude.capture", "direct", false, true, false, false, nil))
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	mustOK(t, err)
	mustOK(t, ch.QueueBind(q.Name, "rk.a", "prelude.capture", false, nil))
	mustOK(t, ch.Confirm(false))
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 8))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	for _, body := range []string{"one", "two", "three"} {
		mustOK(t, ch.Publish("prelude.capture", "rk.a", false, false, amqp091.Publishing{ContentType: "text/plain", Body: []byte(body)}))
	}
	mustOK(t, ch.Publish("prelude.capture", "nowhere", true, false, amqp091.Publishing{Body: []byte("lost")}))
	for range 4 {
		if c := <-confirms; !c.Ack {
			t.Fatalf("confirm %d nacked", c.DeliveryTag)
		}
	}
	<-returns
	deliveries, err := ch.Consume(q.Name, "capture-consumer", false, false, false, false, nil)
	mustOK(t, err)
	d1, d2, d3 := <-deliveries, <-deliveries, <-deliveries
	mustOK(t, d1.Ack(false))
	mustOK(t, d2.Nack(false, false))
	mustOK(t, d3.Reject(false))
	tx, err := conn.Channel()
	mustOK(t, err)
	mustOK(t, tx.Tx())
	mustOK(t, tx.Publish("prelude.capture", "rk.a", false, false, amqp091.Publishing{Body: []byte("in a transaction")}))
	mustOK(t, tx.TxCommit())
	mustOK(t, (<-deliveries).Ack(false))
	mustOK(t, tx.Close())
	mustOK(t, ch.Close())
}

func mustOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// methods returns the methods of the lines from dir, in order.
func methods(ls []line, dir string) []string {
	var out []string
	for _, l := range ls {
		if l.Type == "method" && l.Dir == dir {
			out = append(out, l.Method)
		}
	}
	return out
}

func count(xs []string, x string) int {
	n := 0
	for _, s := range xs {
		if s == x {
			n++
		}
	}
	return n
}

func TestCaptureNDJSONHoldsWhatTheClientDid(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	file := filepath.Join(t.TempDir(), "cap.ndjson")
	id := startCapture(t, c, fmt.Sprintf(`{"filter": {"vhost": "/"}, "format": "ndjson", "file": %q, "body": "full"}`, file))
	scenario(t, e2e.URL(addr, "/"))
	waitFor(t, "the session to end", func() bool { return len(sessions(t, c, "?vhost=/")) == 0 })
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	if bytes.Contains(raw, []byte(e2e.TestPassword)) {
		t.Fatal("the capture holds the password")
	}
	ls := readLines(t, raw)
	client, broker := methods(ls, "client"), methods(ls, "broker")
	for m, n := range map[string]int{"connection.start-ok": 1, "connection.open": 1, "exchange.declare": 1,
		"queue.declare": 1, "queue.bind": 1, "confirm.select": 1, "basic.publish": 5, "basic.consume": 1,
		"basic.ack": 2, "basic.nack": 1, "basic.reject": 1, "tx.select": 1, "tx.commit": 1,
		"channel.open": 2, "channel.close": 2, "connection.close": 1} {
		if got := count(client, m); got != n {
			t.Errorf("client %s: %d lines, want %d", m, got, n)
		}
	}
	for m, n := range map[string]int{"connection.start": 1, "connection.open-ok": 1, "queue.declare-ok": 1,
		"basic.return": 1, "basic.deliver": 4, "tx.commit-ok": 1, "connection.close-ok": 1} {
		if got := count(broker, m); got != n {
			t.Errorf("broker %s: %d lines, want %d", m, got, n)
		}
	}
	if count(broker, "basic.ack") == 0 {
		t.Error("no publisher confirm was captured")
	}
	var bodies []string
	var serverNamed string
	for _, l := range ls {
		switch {
		case l.Type == "body" && l.Dir == "client":
			b, _ := base64.StdEncoding.DecodeString(l.Body)
			bodies = append(bodies, string(b))
		case l.Method == "queue.declare-ok":
			serverNamed, _ = l.Args["queue"].(string)
		case l.Method == "connection.start-ok":
			if r, _ := l.Args["response"].(string); !strings.Contains(r, "redacted PLAIN") || !strings.Contains(r, e2e.TestUser) {
				t.Errorf("start-ok response %q: want a marker naming the mechanism and user", r)
			}
		case l.Type == "header" && l.Dir == "client" && l.BodySize == 3:
			if l.Props["content-type"] != "text/plain" {
				t.Errorf("content header properties %v", l.Props)
			}
		}
	}
	if strings.Join(bodies, ",") != "one,two,three,lost,in a transaction" {
		t.Errorf("published bodies %q", bodies)
	}
	if !strings.HasPrefix(serverNamed, "amq.gen-") {
		t.Errorf("queue.declare-ok names %q, want the broker's server-named queue", serverNamed)
	}
	if ls[0].Event != "open" || ls[0].User != e2e.TestUser || ls[len(ls)-1].Event != "close" {
		t.Errorf("first and last lines: %+v ... %+v", ls[0], ls[len(ls)-1])
	}
}

// The per-session statistics follow a live session, and the vhost's totals
// take it in when it ends.
func TestSessionStatistics(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostA)))
	before := vhostCounters(amqpStats(t, c), e2e.VhostA).Messages
	conn := dial(t, e2e.URL(addr, e2e.VhostA))
	ch, err := conn.Channel()
	mustOK(t, err)
	mustOK(t, ch.Confirm(false))
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	mustOK(t, err)
	for i := range 10 {
		dc, err := ch.PublishWithDeferredConfirm("", q.Name, false, false, amqp091.Publishing{Body: make([]byte, 16+i)})
		mustOK(t, err)
		dc.Wait()
	}
	deliveries, err := ch.Consume(q.Name, "", false, false, false, false, nil)
	mustOK(t, err)
	for range 10 {
		d := <-deliveries
		mustOK(t, d.Ack(false))
	}
	id, ok := sessionOf(t, c, conn.LocalAddr())
	if !ok {
		t.Fatal("no session for the client")
	}
	var d l4amqp.SessionDetail
	waitFor(t, "the acks to be counted", func() bool {
		_, body := c.Get(t, "/prelude/amqp/sessions/"+itoa(id))
		mustOK(t, json.Unmarshal([]byte(body), &d))
		return d.Messages.Acked == 10
	})
	m := d.Messages
	if m.Published != 10 || m.PublishedBytes != 16*10+45 || m.Confirmed != 10 || m.Delivered != 10 || m.DeliveredBytes != m.PublishedBytes {
		t.Errorf("session counts %+v", m)
	}
	if len(d.Channels) != 1 || d.Channels[0].ID != 1 || !d.Channels[0].Confirm || d.Channels[0].Counts.Published != 10 {
		t.Errorf("channels %+v", d.Channels)
	}
	mustOK(t, ch.Close())
	mustOK(t, conn.Close())
	waitFor(t, "the session to end", func() bool { _, still := sessionOf(t, c, conn.LocalAddr()); return !still })
	after := vhostCounters(amqpStats(t, c), e2e.VhostA)
	if after.Messages.Published-before.Published != 10 || after.Messages.Acked-before.Acked != 10 || after.ChannelCloses["200"] == 0 {
		t.Errorf("vhost totals before %+v after %+v", before, after)
	}
	metrics := c.Metrics(t)
	for _, want := range []string{`caddy_layer4_amqp_messages_total{kind="published",route="` + e2e.VhostA + `"}`,
		`caddy_layer4_amqp_channels_opened_total{route="` + e2e.VhostA + `"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestCapturePCAPNGDecodesInTshark(t *testing.T) {
	tshark := requireTool(t, "tshark")
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	file := filepath.Join(t.TempDir(), "cap.pcapng")
	id := startCapture(t, c, fmt.Sprintf(`{"filter": {"vhost": "/"}, "format": "pcapng", "file": %q, "body": 2}`, file))
	scenario(t, e2e.URL(addr, "/"))
	waitFor(t, "the session to end", func() bool { return len(sessions(t, c, "?vhost=/")) == 0 })
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	if bytes.Contains(raw, []byte(e2e.TestPassword)) {
		t.Fatal("the capture holds the password")
	}
	out, err := exec.Command(tshark, "-r", file, "-Y", "amqp", "-T", "fields", "-e", "amqp.method.class", "-e", "amqp.method.method").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	got := map[string]int{}
	for _, l := range strings.Split(string(out), "\n") {
		for _, pair := range zipFields(l) {
			got[pair]++
		}
	}
	// class,method ids as the dissector reads them.
	for pair, n := range map[string]int{"10,11": 1, "10,40": 1, "40,10": 1, "50,10": 1, "85,10": 1,
		"60,40": 5, "60,50": 1, "60,60": 4, "60,90": 1, "60,120": 1, "90,20": 1, "10,50": 1} {
		if got[pair] != n {
			t.Errorf("tshark shows %s %d times, want %d (all: %v)", pair, got[pair], n, got)
		}
	}
}

// zipFields pairs tshark's comma-separated class and method columns.
func zipFields(l string) []string {
	cols := strings.Split(l, "\t")
	if len(cols) != 2 || cols[0] == "" {
		return nil
	}
	cs, ms := strings.Split(cols[0], ","), strings.Split(cols[1], ",")
	var out []string
	for i := range min(len(cs), len(ms)) {
		out = append(out, cs[i]+","+ms[i])
	}
	return out
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if e2e.CI() {
			t.Fatalf("%s is not installed (scripts/test-deps.sh installs it)", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

// A routing-key filter keeps only the channel that published with it.
func TestCaptureRoutingKeyFilterKeepsThatChannel(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	file := filepath.Join(t.TempDir(), "rk.ndjson")
	id := startCapture(t, c, fmt.Sprintf(`{"filter": {"routing_key": "keep.*"}, "file": %q}`, file))
	conn := dial(t, e2e.URL(addr, "/"))
	keep, err := conn.Channel()
	mustOK(t, err)
	other, err := conn.Channel()
	mustOK(t, err)
	for i := range 3 {
		mustOK(t, other.Publish("", "other.queue", false, false, amqp091.Publishing{Body: []byte("other")}))
		mustOK(t, keep.Publish("", "keep.me", false, false, amqp091.Publishing{Body: []byte(fmt.Sprint("kept ", i))}))
	}
	mustOK(t, conn.Close())
	waitFor(t, "the session to end", func() bool { _, still := sessionOf(t, c, conn.LocalAddr()); return !still })
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	ls := readLines(t, raw)
	publishes := 0
	for _, l := range ls {
		if l.Channel != 0 && l.Channel != 1 {
			t.Errorf("a frame of channel %d was kept: %+v", l.Channel, l)
		}
		if l.Method == "basic.publish" {
			publishes++
			if l.Args["routing-key"] != "keep.me" {
				t.Errorf("kept a publish to %v", l.Args["routing-key"])
			}
		}
	}
	if publishes != 3 {
		t.Errorf("%d publishes kept, want 3:\n%s", publishes, raw)
	}
}

func TestCaptureRequestErrors(t *testing.T) {
	c, _ := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	dir := t.TempDir()
	exists := filepath.Join(dir, "exists")
	mustOK(t, os.WriteFile(exists, nil, 0o600))
	for spec, want := range map[string]string{
		`{"file": "/nonexistent/dir/cap.ndjson"}`:                           "no such file or directory",
		fmt.Sprintf(`{"file": %q}`, exists):                                 "file exists",
		fmt.Sprintf(`{"file": %q, "format": "pcap"}`, dir+"/x"):             `pcap`,
		fmt.Sprintf(`{"file": %q, "body": "some"}`, dir+"/y"):               "body",
		fmt.Sprintf(`{"file": %q, "filter": {"client": "nope"}}`, dir+"/z"): "filter.client",
		fmt.Sprintf(`{"file": %q, "filter": {"vhost": "["}}`, dir+"/w"):     "filter.vhost",
		`{"format": "ndjson"}`:                                              "file",
		`{"file": "x", "bogus": 1}`:                                         "bogus",
	} {
		code, body := post(t, c, "/prelude/amqp/captures", spec)
		if code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("POST %s: %d %s, want 400 naming %q", spec, code, body, want)
		}
	}
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/nope", http.StatusNotFound)
}

// A trace streams the lines of a live vhost; a reader that does not keep up
// loses lines, counted in a "dropped" line, and never slows the session.
func TestTraceStreamsAndDropsForASlowReader(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostB)))
	conn := dial(t, e2e.URL(addr, e2e.VhostB)) // live before the trace starts
	resp, err := http.Get("http://" + c.Admin + "/prelude/amqp/trace?vhost=" + e2e.VhostB)
	mustOK(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("trace: %d", resp.StatusCode)
	}
	ch, err := conn.Channel()
	mustOK(t, err)
	mustOK(t, ch.Confirm(false))
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	mustOK(t, err)
	const n = 30000
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, n))
	for range n { // the reader reads nothing meanwhile
		mustOK(t, ch.Publish("", q.Name, false, false, amqp091.Publishing{Body: make([]byte, 16)}))
	}
	for i := range n {
		select {
		case c := <-confirms:
			if !c.Ack {
				t.Fatalf("confirm %d nacked", i)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%d of %d confirms", i, n)
		}
	}
	mustOK(t, conn.Close())
	var published, dropped uint64
	sc := bufio.NewScanner(resp.Body)
	deadline := time.AfterFunc(2*time.Second, func() { _ = resp.Body.Close() })
	defer deadline.Stop()
	for sc.Scan() {
		var l line
		mustOK(t, json.Unmarshal(sc.Bytes(), &l))
		if l.Method == "basic.publish" {
			published++
		}
		dropped += l.Lines
		if l.Method == "connection.close-ok" {
			break
		}
	}
	if published == 0 || dropped == 0 {
		t.Fatalf("trace lines: %d publishes, %d dropped; want both", published, dropped)
	}
	if published >= n {
		t.Errorf("every publish was traced although the reader was slow")
	}
}

// pikaSession declares a queue, publishes with confirms, gets, acks and
// closes, through Debian's pika.
const pikaSession = `
import sys, pika
params = pika.URLParameters(sys.argv[1])
params.client_properties = {"connection_name": "pika-capture"}
conn = pika.BlockingConnection(params)
ch = conn.channel()
ch.confirm_delivery()
q = ch.queue_declare(queue="", exclusive=True).method.queue
ch.basic_publish(exchange="", routing_key=q, body=b"from pika")
method, props, body = ch.basic_get(q)
assert body == b"from pika", body
ch.basic_ack(method.delivery_tag)
conn.close()
`

func runPika(t *testing.T, url string) {
	t.Helper()
	const python = "/usr/bin/python3" // Debian's, with python3-pika
	if err := exec.Command(python, "-c", "import pika").Run(); err != nil {
		if e2e.CI() {
			t.Fatalf("python3-pika is required: %v", err)
		}
		t.Skipf("python3-pika missing: %v", err)
	}
	if out, err := exec.Command(python, "-c", pikaSession, url).CombinedOutput(); err != nil {
		t.Fatalf("pika: %v\n%s", err, out)
	}
}

// A capture started by the Caddyfile survives a reload (its sessions on
// either side of it land in one file), and holds a pika session's methods.
func TestCaptureFromConfigSurvivesReload(t *testing.T) {
	e2e.RequireRabbit(t)
	addr := e2e.FreePort(t)
	file := filepath.Join(t.TempDir(), "config.ndjson")
	h := handler(vhosts([]string{e2e.RabbitAddr}, "/"))
	h["captures"] = []any{map[string]any{"file": file, "filter": map[string]any{"connection_name": "pika-*"}}}
	c := e2e.StartCaddy(t, e2e.Layer4(addr, route(h)))
	c.NoLeak(e2e.TestPassword)
	runPika(t, e2e.URL(addr, "/"))
	h["handshake_timeout"] = "9s" // a different config, the same capture
	c.Reload(t, e2e.Layer4(addr, route(h)))
	runPika(t, e2e.URL(addr, "/"))
	var list []l4amqp.CaptureInfo
	_, body := c.Get(t, "/prelude/amqp/captures")
	mustOK(t, json.Unmarshal([]byte(body), &list))
	var info *l4amqp.CaptureInfo
	for i := range list {
		if list[i].Capture.File == file {
			info = &list[i]
		}
	}
	if info == nil || info.State != "running" || info.Source != "config" || info.Sessions != 2 {
		t.Fatalf("captures after the reload: %s", body)
	}
	waitFor(t, "the sessions' close lines", func() bool {
		raw, _ := os.ReadFile(file) // flushed every second
		return bytes.Count(raw, []byte(`"event":"close"`)) == 2
	})
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	client := methods(readLines(t, raw), "client")
	for m, n := range map[string]int{"confirm.select": 2, "queue.declare": 2, "basic.publish": 2, "basic.get": 2, "basic.ack": 2, "connection.close": 2} {
		if count(client, m) != n {
			t.Errorf("pika %s: %d, want %d\n%s", m, count(client, m), n, raw)
		}
	}
	if bytes.Contains(raw, []byte(e2e.TestPassword)) {
		t.Fatal("the capture holds the password")
	}
}

// A malformed frame inside a live session is relayed (RabbitMQ judges it:
// Close 501) and captured as malformed with its offset.
func TestCaptureRecordsAMalformedFrame(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	file := filepath.Join(t.TempDir(), "malformed.ndjson")
	id := startCapture(t, c, fmt.Sprintf(`{"file": %q, "filter": {"vhost": "/"}}`, file))
	conn := rawClient(t, addr)
	_, _ = conn.Write(amqp.Header091)
	readMethod(t, conn) // Start
	send(t, conn, plainStartOk())
	readMethod(t, conn) // Tune
	send(t, conn, &amqp.TuneOk{ChannelMax: 16, FrameMax: 131072})
	send(t, conn, &amqp.Open{VirtualHost: "/"})
	if _, ok := readMethod(t, conn).(*amqp.OpenOk); !ok {
		t.Fatal("no Open-Ok")
	}
	heartbeat := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeartbeat})
	bad := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameMethod, Channel: 1, Payload: []byte{0, 20, 0, 10, 0}})
	bad[len(bad)-1] = 0x00 // the frame-end octet
	_, _ = conn.Write(append(heartbeat, bad...))
	expectClose(t, conn, amqp.ReplyFrameError, "")
	waitFor(t, "the session to end", func() bool { _, still := sessionOf(t, c, conn.LocalAddr()); return !still })
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	var malformed []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		var m map[string]any
		mustOK(t, json.Unmarshal(sc.Bytes(), &m))
		if m["type"] == "malformed" {
			malformed = append(malformed, m)
		}
	}
	if len(malformed) != 1 || malformed[0]["offset"] != float64(len(heartbeat)) || malformed[0]["dir"] != "client" ||
		!strings.Contains(fmt.Sprint(malformed[0]["error"]), "frame-end") {
		t.Fatalf("malformed lines %v\n%s", malformed, raw)
	}
}

// A capture whose writes fail (a full disk: /dev/full) stops itself,
// says why in the API, the log and an event, and the session goes on.
func TestFailingCaptureLeavesSessionsAlone(t *testing.T) {
	e2e.RequireRabbit(t)
	addr := e2e.FreePort(t)
	h := handler(vhosts([]string{e2e.RabbitAddr}, "/"))
	h["captures"] = []any{map[string]any{"file": "/dev/full"}}
	c := e2e.StartCaddy(t, e2e.Layer4(addr, route(h)))
	c.NoLeak(e2e.TestPassword)
	conn := dial(t, e2e.URL(addr, "/"))
	roundTrip(t, conn, 200) // more than a second, and more than the 64 KiB write buffer
	var list []l4amqp.CaptureInfo
	waitFor(t, "the capture to fail", func() bool {
		_, body := c.Get(t, "/prelude/amqp/captures")
		mustOK(t, json.Unmarshal([]byte(body), &list))
		return len(list) == 1 && list[0].State == "failed"
	})
	if !strings.Contains(list[0].Reason, "no space left on device") {
		t.Errorf("reason %q", list[0].Reason)
	}
	roundTrip(t, conn, 20) // the session is unaffected
	if !strings.Contains(c.Logs(), "amqp capture stopped") {
		t.Error("no log line for the failed capture")
	}
}

// A trace goes on across a config reload.
func TestTraceSurvivesReload(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	resp, err := http.Get("http://" + c.Admin + "/prelude/amqp/trace?connection_name=reload-trace")
	mustOK(t, err)
	defer resp.Body.Close()
	h := handler(vhosts([]string{e2e.RabbitAddr}, "/"))
	h["handshake_timeout"] = "9s"
	c.Reload(t, e2e.Layer4(addr, route(h)))
	conn, err := amqp091.DialConfig(e2e.URL(addr, "/"), amqp091.Config{Properties: amqp091.Table{"connection_name": "reload-trace"}})
	mustOK(t, err)
	roundTrip(t, conn, 3)
	mustOK(t, conn.Close())
	sc := bufio.NewScanner(resp.Body)
	deadline := time.AfterFunc(10*time.Second, func() { _ = resp.Body.Close() })
	defer deadline.Stop()
	publishes := 0
	for sc.Scan() {
		if bytes.Contains(sc.Bytes(), []byte(e2e.TestPassword)) {
			t.Fatal("the trace shows the password")
		}
		var l line
		mustOK(t, json.Unmarshal(sc.Bytes(), &l))
		if l.Method == "basic.publish" {
			publishes++
		}
		if l.Event == "close" {
			break
		}
	}
	if publishes != 3 {
		t.Fatalf("the trace showed %d publishes after the reload, want 3", publishes)
	}
}

// Connection.Update-Secret's new secret never reaches a capture or a trace.
func TestUpdateSecretIsRedacted(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	const secret = "N3w-s3cret-d4e1"
	c.NoLeak(secret)
	file := filepath.Join(t.TempDir(), "secret.ndjson")
	id := startCapture(t, c, fmt.Sprintf(`{"file": %q, "filter": {"connection_name": "update-secret"}}`, file))
	resp, err := http.Get("http://" + c.Admin + "/prelude/amqp/trace?connection_name=update-secret")
	mustOK(t, err)
	defer resp.Body.Close()
	conn, err := amqp091.DialConfig(e2e.URL(addr, "/"), amqp091.Config{Properties: amqp091.Table{"connection_name": "update-secret"}})
	mustOK(t, err)
	err = conn.UpdateSecret(secret, "rotation")
	t.Logf("the broker answered update-secret with %v", err)
	_ = conn.Close()
	waitFor(t, "the session to end", func() bool { _, still := sessionOf(t, c, conn.LocalAddr()); return !still })
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	var seen bool
	for _, l := range readLines(t, raw) {
		if l.Method == "connection.update-secret" {
			seen = true
			if l.Args["new-secret"] != "[redacted new secret]" || l.Args["reason"] != "rotation" || bytes.Contains(l.Raw, []byte(secret)) {
				t.Errorf("update-secret args %v, raw %q", l.Args, l.Raw)
			}
		}
	}
	if !seen || bytes.Contains(raw, []byte(secret)) {
		t.Fatalf("update-secret captured %v; the capture holds the secret: %v\n%s", seen, bytes.Contains(raw, []byte(secret)), raw)
	}
	deadline := time.AfterFunc(2*time.Second, func() { _ = resp.Body.Close() })
	defer deadline.Stop()
	traced, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if !bytes.Contains(traced, []byte("connection.update-secret")) || bytes.Contains(traced, []byte(secret)) {
		t.Fatalf("trace: %s", traced)
	}
}

// stats_objects counts per exchange and per queue, within its limit.
func TestStatsPerExchangeAndQueue(t *testing.T) {
	h := handler(vhosts([]string{e2e.RabbitAddr}, e2e.VhostA))
	h["stats_objects"] = 1000
	c, addr := startProxy(t, h)
	before := amqpStats(t, c)
	conn := dial(t, e2e.URL(addr, e2e.VhostA))
	ch, err := conn.Channel()
	mustOK(t, err)
	const x, q = "prelude.objects.x", "prelude.objects.q"
	mustOK(t, ch.ExchangeDeclare(x, "direct", false, true, false, false, nil))
	_, err = ch.QueueDeclare(q, false, false, true, false, nil) // exclusive: gone with the connection
	mustOK(t, err)
	mustOK(t, ch.QueueBind(q, "k", x, false, nil))
	mustOK(t, ch.Confirm(false))
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	for i := range 5 {
		dc, err := ch.PublishWithDeferredConfirm(x, "k", false, false, amqp091.Publishing{Body: make([]byte, 10+i)})
		mustOK(t, err)
		dc.Wait()
	}
	mustOK(t, ch.Publish(x, "nowhere", true, false, amqp091.Publishing{Body: []byte("lost")}))
	<-returns
	deliveries, err := ch.Consume(q, "objects-consumer", true, false, false, false, nil)
	mustOK(t, err)
	for range 5 {
		<-deliveries
	}
	mustOK(t, ch.Cancel("objects-consumer", false))
	dc, err := ch.PublishWithDeferredConfirm(x, "k", false, false, amqp091.Publishing{Body: make([]byte, 20)})
	mustOK(t, err)
	dc.Wait()
	waitFor(t, "basic.get to find the message", func() bool {
		_, ok, err := ch.Get(q, true)
		mustOK(t, err)
		return ok
	})
	after := amqpStats(t, c)
	dx := after.Exchanges[x].Messages - before.Exchanges[x].Messages
	dxb := after.Exchanges[x].Bytes - before.Exchanges[x].Bytes
	dr := after.Exchanges[x].Returned - before.Exchanges[x].Returned
	dq := after.Queues[q].Messages - before.Queues[q].Messages
	dqb := after.Queues[q].Bytes - before.Queues[q].Bytes
	if dx != 7 || dxb != 10+11+12+13+14+4+20 || dr != 1 || dq != 6 || dqb != 10+11+12+13+14+20 {
		t.Fatalf("exchange %d msgs %d bytes %d returned; queue %d msgs %d bytes\n%+v\n%+v", dx, dxb, dr, dq, dqb, after.Exchanges, after.Queues)
	}
	if m := c.Metrics(t); !strings.Contains(m, `caddy_layer4_amqp_queue_messages_total{queue="`+q+`"}`) {
		t.Error("no queue metric")
	}
}

// The limits: max_sessions selects that many sessions, max_bytes and
// duration stop the capture (state "limit", with the reason), and the
// sessions go on.
func TestCaptureLimits(t *testing.T) {
	c, addr := startProxy(t, handler(vhosts([]string{e2e.RabbitAddr}, "/")))
	dir := t.TempDir()
	sessionsID := startCapture(t, c, fmt.Sprintf(`{"file": %q, "max_sessions": 1, "filter": {"connection_name": "limits"}}`, filepath.Join(dir, "s")))
	bytesID := startCapture(t, c, fmt.Sprintf(`{"file": %q, "max_bytes": 2000, "filter": {"connection_name": "limits"}}`, filepath.Join(dir, "b")))
	durationID := startCapture(t, c, fmt.Sprintf(`{"file": %q, "duration": "300ms", "filter": {"connection_name": "limits"}}`, filepath.Join(dir, "d")))
	for range 2 {
		conn, err := amqp091.DialConfig(e2e.URL(addr, "/"), amqp091.Config{Properties: amqp091.Table{"connection_name": "limits"}})
		mustOK(t, err)
		roundTrip(t, conn, 10)
		mustOK(t, conn.Close())
	}
	time.Sleep(400 * time.Millisecond)
	byID := map[string]l4amqp.CaptureInfo{}
	_, body := c.Get(t, "/prelude/amqp/captures")
	var list []l4amqp.CaptureInfo
	mustOK(t, json.Unmarshal([]byte(body), &list))
	for _, ci := range list {
		byID[ci.ID] = ci
	}
	if s := byID[sessionsID]; s.Sessions != 1 || s.State != "running" {
		t.Errorf("max_sessions 1: %+v", s)
	}
	if b := byID[bytesID]; b.State != "limit" || b.Reason != "max_bytes reached" || b.Bytes < 2000 || b.Bytes > 2000+64<<10 {
		t.Errorf("max_bytes 2000: %+v", b)
	}
	if d := byID[durationID]; d.State != "limit" || d.Reason != "duration reached" {
		t.Errorf("duration 300ms: %+v", d)
	}
	for _, id := range []string{sessionsID, bytesID, durationID} {
		mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "s"))
	mustOK(t, err)
	if n := bytes.Count(raw, []byte(`"event":"open"`)); n != 1 {
		t.Errorf("max_sessions 1 captured %d sessions", n)
	}
}
