package amqp

import (
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// The session capture: both directions of a real amqp091-go session with
// RabbitMQ (127.0.0.1:5672, guest/guest), recorded by a forwarder, written
// to testdata with -update. The client stream starts with the protocol
// header; both go to the client's Close-Ok exchange.
const (
	sessionClientFile = "session-client.bin"
	sessionBrokerFile = "session-broker.bin"
)

func loadSession(t testing.TB) (client, broker []byte) {
	t.Helper()
	if *update {
		recordSession(t)
	}
	var err error
	if client, err = os.ReadFile(filepath.Join("testdata", sessionClientFile)); err != nil {
		t.Fatal(err)
	}
	if broker, err = os.ReadFile(filepath.Join("testdata", sessionBrokerFile)); err != nil {
		t.Fatal(err)
	}
	return client, broker
}

// recordSession runs the scenario through a recording forwarder.
func recordSession(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var up, down lockedBytes
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", "127.0.0.1:5672")
		if err != nil {
			_ = c.Close()
			return
		}
		var inner sync.WaitGroup
		inner.Add(2)
		go func() {
			defer inner.Done()
			_, _ = io.Copy(io.MultiWriter(b, &up), c)
			_ = b.(*net.TCPConn).CloseWrite()
		}()
		go func() {
			defer inner.Done()
			_, _ = io.Copy(io.MultiWriter(c, &down), b)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		inner.Wait()
		_ = c.Close()
		_ = b.Close()
	}()
	runScenario(t, "amqp://guest:guest@"+ln.Addr().String()+"/")
	wg.Wait()
	for name, b := range map[string][]byte{sessionClientFile: up.bytes(), sessionBrokerFile: down.bytes()} {
		if err := os.WriteFile(filepath.Join("testdata", name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// runScenario declares, publishes with confirms, consumes, acks, nacks,
// rejects, uses a transaction, a server-named queue and a mandatory
// unroutable publish, then closes.
func runScenario(t testing.TB, url string) {
	t.Helper()
	conn, err := amqp091.DialConfig(url, amqp091.Config{Heartbeat: 0, Properties: amqp091.Table{"connection_name": "decoder-capture"}})
	if err != nil {
		t.Fatalf("dial through the recorder: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	must(t, err)
	must(t, ch.ExchangeDeclare("prelude.capture", "direct", false, true, false, false, nil))
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	must(t, err)
	must(t, ch.QueueBind(q.Name, "rk.a", "prelude.capture", false, nil))
	must(t, ch.Confirm(false))
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 8))
	for i, body := range []string{"one", "two", "three"} {
		must(t, ch.Publish("prelude.capture", "rk.a", false, false, amqp091.Publishing{
			ContentType: "text/plain", MessageId: string(rune('a' + i)), Body: []byte(body)}))
	}
	for range 3 {
		if c := <-confirms; !c.Ack {
			t.Fatalf("confirm %d nacked", c.DeliveryTag)
		}
	}
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	must(t, ch.Publish("prelude.capture", "nowhere", true, false, amqp091.Publishing{Body: []byte("lost")}))
	<-returns
	<-confirms
	deliveries, err := ch.Consume(q.Name, "capture-consumer", false, false, false, false, nil)
	must(t, err)
	d1, d2, d3 := <-deliveries, <-deliveries, <-deliveries
	must(t, d1.Ack(false))
	must(t, d2.Nack(false, false))
	must(t, d3.Reject(false))

	tx, err := conn.Channel()
	must(t, err)
	must(t, tx.Tx())
	must(t, tx.Publish("prelude.capture", "rk.a", false, false, amqp091.Publishing{Body: []byte("in a transaction")}))
	must(t, tx.TxCommit())
	d4 := <-deliveries
	must(t, d4.Ack(false))
	must(t, tx.Close())
	must(t, ch.Close())
	time.Sleep(50 * time.Millisecond)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type lockedBytes struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBytes) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.b = append(l.b, p...)
	l.mu.Unlock()
	return len(p), nil
}

func (l *lockedBytes) bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b...)
}
