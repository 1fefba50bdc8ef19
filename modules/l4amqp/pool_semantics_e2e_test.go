package l4amqp_test

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/internal/e2e"
	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// dialKeep dials through the proxy and returns the client's TCP connection
// too, for a test to drop it without a Connection.Close.
func dialKeep(t *testing.T, url string) (*amqp091.Connection, net.Conn) {
	t.Helper()
	var raw net.Conn
	conn, err := amqp091.DialConfig(url, amqp091.Config{Dial: func(network, addr string) (net.Conn, error) {
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		raw = c
		return c, err
	}})
	if err != nil {
		t.Fatalf("dial %s: %v", redact(url), err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn, raw
}

func channel(t *testing.T, conn *amqp091.Connection) *amqp091.Channel {
	t.Helper()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	return ch
}

func publishDirect(t *testing.T, q string, n int) {
	t.Helper()
	if err := publishConfirmed(dial(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB)), q, n); err != nil {
		t.Fatal(err)
	}
}

// TestPoolRequeuesOnDisconnect: messages a pooled client received but had
// not acknowledged go back to the queue when it drops its TCP connection,
// as with a connection of its own; a client on the same broker connection
// goes on.
func TestPoolRequeuesOnDisconnect(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	q := declareQueue(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	publishDirect(t, q, 10)
	other := dial(t, e2e.URL(addr, e2e.VhostB))
	conn, raw := dialKeep(t, e2e.URL(addr, e2e.VhostB))
	ch := channel(t, conn)
	if err := ch.Qos(10, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume(q, "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		d := <-deliveries
		if i < 3 {
			_ = d.Ack(false)
		}
	}
	time.Sleep(100 * time.Millisecond) // the acks reach the broker
	_ = raw.Close()
	waitFor(t, "the 7 unacknowledged messages back in the queue", func() bool { return messageCount(t, q) == 7 })
	roundTrip(t, other, 5)
	if broker.Conns.Load() != 1 {
		t.Fatalf("%d broker connections, want 1", broker.Conns.Load())
	}
}

// TestPoolTransactions: tx.select, a rolled-back publish and a committed
// one keep their meaning on a mapped channel.
func TestPoolTransactions(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	q := declareQueue(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	ch := channel(t, dial(t, e2e.URL(addr, e2e.VhostB)))
	mustOK(t, ch.Tx())
	pub := func(n int) {
		for range n {
			mustOK(t, ch.Publish("", q, false, false, amqp091.Publishing{Body: []byte("0123456789abcdef")}))
		}
	}
	pub(2)
	mustOK(t, ch.TxRollback())
	pub(3)
	mustOK(t, ch.TxCommit())
	if n := messageCount(t, q); n != 3 {
		t.Fatalf("queue holds %d messages, want the 3 committed", n)
	}
}

// TestPoolExclusiveQueuesGoWithTheirClient: exclusive queues a pooled
// client declared (server-named and named) are deleted when it leaves,
// cleanly or not, although the broker connection that owns them stays.
func TestPoolExclusiveQueuesGoWithTheirClient(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	stay := dial(t, e2e.URL(addr, e2e.VhostB)) // keeps the broker connection in use
	for _, how := range []string{"close", "drop"} {
		t.Run(how, func(t *testing.T) {
			conn, raw := dialKeep(t, e2e.URL(addr, e2e.VhostB))
			ch := channel(t, conn)
			gen, err := ch.QueueDeclare("", false, false, true, false, nil)
			mustOK(t, err)
			named := fmt.Sprintf("prelude-excl-%s-%d", how, time.Now().UnixNano())
			_, err = ch.QueueDeclare(named, false, false, true, true, nil) // no-wait
			mustOK(t, err)
			if !strings.HasPrefix(gen.Name, "amq.gen-") {
				t.Fatalf("server-named queue %q", gen.Name)
			}
			for _, q := range []string{gen.Name, named} {
				if !queueExists(t, q) {
					t.Fatalf("queue %s missing while its client is connected", q)
				}
			}
			if how == "close" {
				mustOK(t, conn.Close())
			} else {
				_ = raw.Close()
			}
			waitFor(t, "the exclusive queues deleted", func() bool { return !queueExists(t, gen.Name) && !queueExists(t, named) })
		})
	}
	roundTrip(t, stay, 3)
	if broker.Conns.Load() != 1 {
		t.Fatalf("%d broker connections, want 1", broker.Conns.Load())
	}
	if n := c.MetricValue(t, "caddy_layer4_amqp_pool_exclusive_queues_deleted_total"); n < 4 {
		t.Fatalf("pool_exclusive_queues_deleted_total %v, want at least 4", n)
	}
}

// queueExists asks the broker directly, over a connection of its own.
func queueExists(t *testing.T, q string) bool {
	t.Helper()
	conn := dial(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	defer conn.Close()
	ch := channel(t, conn)
	_, err := ch.QueueDeclarePassive(q, false, false, false, false, nil)
	var ae *amqp091.Error
	switch {
	case errors.As(err, &ae) && ae.Code == 404:
		return false
	case errors.As(err, &ae) && ae.Code == 405: // exclusive to another connection: it exists
		return true
	}
	mustOK(t, err)
	return true
}

// TestPoolReturnsAndChannelErrors: a mandatory message nobody can take
// comes back (basic.return) to the client that sent it, and the broker's
// channel-level refusal (404) reaches the client on its own channel id,
// which it can then open again.
func TestPoolReturnsAndChannelErrors(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	bystander := dial(t, e2e.URL(addr, e2e.VhostB))
	bch := channel(t, bystander)
	bReturns := bch.NotifyReturn(make(chan amqp091.Return, 1))
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	ch := channel(t, conn)
	returns := ch.NotifyReturn(make(chan amqp091.Return, 1))
	mustOK(t, ch.Publish("", "prelude-nobody-here", true, false, amqp091.Publishing{Body: []byte("returned")}))
	select {
	case r := <-returns:
		if r.ReplyCode != 312 || string(r.Body) != "returned" {
			t.Fatalf("return %d %q", r.ReplyCode, r.Body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no basic.return")
	}
	select {
	case r := <-bReturns:
		t.Fatalf("the other client got the return: %+v", r)
	default:
	}
	_, err := ch.QueueDeclarePassive("prelude-no-such-queue", false, false, false, false, nil)
	var ae *amqp091.Error
	if !errors.As(err, &ae) || ae.Code != 404 || ae.Server != true {
		t.Fatalf("passive declare of a missing queue: %v, want the broker's 404", err)
	}
	roundTrip(t, conn, 3)
	roundTrip(t, bystander, 3)
}

// TestPoolBrokerLost: a member dying under a pool closes every client of
// its connections within a second, with a Close that says so; new clients
// go to the farm's next member.
func TestPoolBrokerLost(t *testing.T) {
	first := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	second := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	v := vhosts([]string{first.Addr, second.Addr}, e2e.VhostB)
	v["lb_policy"] = "first"
	v["pool"] = map[string]any{}
	c, addr := startProxy(t, handler(v))
	const clients = 10
	closed := make([]chan *amqp091.Error, clients)
	for i := range clients {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		closed[i] = conn.NotifyClose(make(chan *amqp091.Error, 1))
	}
	if first.Conns.Load() != 1 || second.Conns.Load() != 0 {
		t.Fatalf("broker connections: first %d, second %d", first.Conns.Load(), second.Conns.Load())
	}
	first.Close()
	cut := time.Now()
	first.Cut()
	for i, ch := range closed {
		select {
		case err := <-ch:
			if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "broker connection was lost") {
				t.Fatalf("client %d: %v, want Close 320 saying the broker connection was lost", i, err)
			}
		case <-time.After(time.Second - time.Since(cut)):
			t.Fatalf("client %d: no Close within 1s of the broker's loss", i)
		}
	}
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, conn, 3)
	if ss := sessions(t, c, ""); len(ss) != 1 || ss[0].Upstream != second.Addr {
		t.Fatalf("sessions after the loss: %+v", ss)
	}
}

// TestPoolLimits: a pool at max_connections with every channel taken
// refuses a new client with a Close naming the limit; a client's channel
// beyond the connection's channels gets a Close naming that.
func TestPoolLimits(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{
		"max_connections": 1, "max_channels_per_connection": 3})))
	a := dial(t, e2e.URL(addr, e2e.VhostB))
	channel(t, a)
	channel(t, a) // a holds two channels
	b := dial(t, e2e.URL(addr, e2e.VhostB))
	refusal(t, e2e.URL(addr, e2e.VhostB), 530, "max_connections 1", 2*time.Second)
	channel(t, b) // b's first channel is its reservation
	closed := a.NotifyClose(make(chan *amqp091.Error, 1))
	if _, err := a.Channel(); err == nil {
		t.Fatal("a third channel for a on a full connection opened")
	}
	select {
	case err := <-closed:
		if err == nil || err.Code != 530 || !strings.Contains(err.Reason, "max_channels_per_connection") {
			t.Fatalf("a: %v, want Close 530 naming max_channels_per_connection", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no Close for a channel beyond the pool's")
	}
	waitFor(t, "a's channels given back", func() bool {
		ps := pools(t, c, broker.Addr)
		return len(ps) == 1 && ps[0].Clients == 1 && ps[0].ChannelsInUse == 1
	})
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 2)
}

// TestPoolSurvivesReload: pooled sessions live through a config reload,
// and clients after it join the same broker connection.
func TestPoolSurvivesReload(t *testing.T) {
	e2e.RequireRabbit(t)
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	addr := e2e.FreePort(t)
	h := handler(pooled(broker, e2e.VhostB, map[string]any{}))
	c := e2e.StartCaddy(t, e2e.Layer4(addr, route(h)))
	c.NoLeak(e2e.TestPassword)
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	roundTrip(t, conn, 3)
	h["handshake_timeout"] = "9s"
	c.Reload(t, e2e.Layer4(addr, route(h)))
	roundTrip(t, conn, 3)
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 3)
	if broker.Conns.Load() != 1 {
		t.Fatalf("%d broker connections across the reload, want 1", broker.Conns.Load())
	}
}

// TestPoolHeartbeats: the proxy sends heartbeats to a pooled client (the
// broker's reach only the pooled connection), so an idle client with a
// short heartbeat is not dropped.
func TestPoolHeartbeats(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	conn, err := amqp091.DialConfig(e2e.URL(addr, e2e.VhostB), amqp091.Config{Heartbeat: time.Second})
	mustOK(t, err)
	defer conn.Close()
	closed := conn.NotifyClose(make(chan *amqp091.Error, 1))
	select {
	case err := <-closed:
		t.Fatalf("idle client closed: %v", err)
	case <-time.After(3500 * time.Millisecond):
	}
	roundTrip(t, conn, 2)
}

// TestPoolSever: an operator's graceful sever closes one pooled client
// with Close 320; the others on its broker connection go on.
func TestPoolSever(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	victim := dial(t, e2e.URL(addr, e2e.VhostB))
	channel(t, victim)
	other := dial(t, e2e.URL(addr, e2e.VhostB))
	closed := victim.NotifyClose(make(chan *amqp091.Error, 1))
	ss := sessions(t, c, "")
	if len(ss) != 2 {
		t.Fatalf("sessions: %+v", ss)
	}
	mustDo(t, c, "DELETE", "/prelude/amqp/sessions/"+itoa(ss[0].ID)+"?graceful=1", 200)
	select {
	case err := <-closed:
		if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "operator") {
			t.Fatalf("severed client: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("no Close after a graceful sever")
	}
	roundTrip(t, other, 3)
}

// pythonClients publishes with a confirm and gets the message back with
// pika (PLAIN) and py-amqp (AMQPLAIN).
const pikaPooled = `
import sys, pika
conn = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
ch = conn.channel()
ch.confirm_delivery()
q = ch.queue_declare(queue="", exclusive=True).method.queue
ch.basic_publish(exchange="", routing_key=q, body=b"from pika")
method, props, body = ch.basic_get(q)
assert body == b"from pika", body
ch.basic_ack(method.delivery_tag)
conn.close()
`

const pyAMQPPooled = `
import sys, amqp
host, user, password, vhost = sys.argv[1:5]
conn = amqp.Connection(host=host, userid=user, password=password, virtual_host=vhost, login_method="AMQPLAIN")
conn.connect()
ch = conn.channel()
ch.confirm_select()
q, _, _ = ch.queue_declare(queue="", exclusive=True)
ch.basic_publish(amqp.Message("from py-amqp"), exchange="", routing_key=q)
m = ch.basic_get(q)
assert m.body == "from py-amqp" or m.body == b"from py-amqp", m.body
ch.basic_ack(m.delivery_tag)
conn.close()
`

// TestPoolPythonClients: pika and py-amqp (AMQPLAIN) clients work through
// a pool, sharing one broker connection per credentials: AMQPLAIN's table
// of the same user and password is other credentials than PLAIN's, and
// gets a connection of its own, checked by the broker.
func TestPoolPythonClients(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	keep := dial(t, e2e.URL(addr, e2e.VhostB))
	const python = "/usr/bin/python3"
	for _, mod := range []string{"pika", "amqp"} {
		if err := exec.Command(python, "-c", "import "+mod).Run(); err != nil {
			if e2e.CI() {
				t.Fatalf("python3-%s is required: %v", mod, err)
			}
			t.Skipf("python3-%s missing: %v", mod, err)
		}
	}
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if out, err := exec.Command(python, "-c", pikaPooled, e2e.URL(addr, e2e.VhostB)).CombinedOutput(); err != nil {
				t.Errorf("pika: %v\n%s", err, out)
			}
		}()
		go func() {
			defer wg.Done()
			if out, err := exec.Command(python, "-c", pyAMQPPooled, addr, e2e.TestUser, e2e.TestPassword, e2e.VhostB).CombinedOutput(); err != nil {
				t.Errorf("py-amqp: %v\n%s", err, out)
			}
		}()
	}
	wg.Wait()
	roundTrip(t, keep, 2)
	if n := broker.Conns.Load(); n > 2 {
		t.Fatalf("%d broker connections for PLAIN and AMQPLAIN clients, want at most 2", n)
	}
	if ps := pools(t, c, broker.Addr); len(ps) != 1 || ps[0].HandshakesSaved < 4 {
		t.Fatalf("pools: %+v", ps)
	}
}

// TestPoolExclusiveQueuesStayExclusive: another client of the same pooled
// broker connection cannot reach a queue a client declared exclusive: it
// gets the broker's answer to another connection, 405 RESOURCE_LOCKED, on
// that channel alone.
func TestPoolExclusiveQueuesStayExclusive(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	owner := dial(t, e2e.URL(addr, e2e.VhostB))
	och := channel(t, owner)
	gen, err := och.QueueDeclare("", false, false, true, false, nil)
	mustOK(t, err)
	named := fmt.Sprintf("prelude-locked-%d", time.Now().UnixNano())
	_, err = och.QueueDeclare(named, false, false, true, false, nil)
	mustOK(t, err)
	other := dial(t, e2e.URL(addr, e2e.VhostB))
	for _, try := range []func(ch *amqp091.Channel) error{
		func(ch *amqp091.Channel) error {
			_, err := ch.Consume(gen.Name, "", true, false, false, false, nil)
			return err
		},
		func(ch *amqp091.Channel) error {
			_, err := ch.QueueDeclarePassive(named, false, false, true, false, nil)
			return err
		},
		func(ch *amqp091.Channel) error { _, _, err := ch.Get(named, true); return err },
		func(ch *amqp091.Channel) error { _, err := ch.QueuePurge(gen.Name, false); return err },
		func(ch *amqp091.Channel) error { _, err := ch.QueueDelete(named, false, false, false); return err },
	} {
		err := try(channel(t, other))
		var ae *amqp091.Error
		if !errors.As(err, &ae) || ae.Code != 405 || !strings.Contains(ae.Reason, "RESOURCE_LOCKED") {
			t.Fatalf("another client's access to an exclusive queue: %v, want 405 RESOURCE_LOCKED", err)
		}
	}
	roundTrip(t, other, 3)
	mustOK(t, och.Publish("", named, false, false, amqp091.Publishing{Body: []byte("mine")}))
	if _, ok, err := och.Get(named, true); err != nil || !ok {
		t.Fatalf("the owner's get: %v %v", ok, err)
	}
	if broker.Conns.Load() != 1 {
		t.Fatalf("%d broker connections, want 1", broker.Conns.Load())
	}
}

// TestPoolBrokerCloseReachesEveryClient: the broker closing a pooled
// connection (here an operator's rabbitmqctl close_connection) reaches
// every client on it with the broker's own code and text.
func TestPoolBrokerCloseReachesEveryClient(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	var closed []chan *amqp091.Error
	for range 5 {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		channel(t, conn)
		closed = append(closed, conn.NotifyClose(make(chan *amqp091.Error, 1)))
	}
	ps := pools(t, c, broker.Addr)
	if len(ps) != 1 || len(ps[0].Connections) != 1 {
		t.Fatalf("pools: %+v", ps)
	}
	name := ps[0].Connections[0].Name
	out, err := e2e.Rabbitmqctl("list_connections", "pid", "client_properties")
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v\n%s", err, out)
	}
	pid := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, name) {
			pid = strings.Fields(line)[0]
		}
	}
	if pid == "" {
		t.Fatalf("the broker lists no connection named %q:\n%s", name, out)
	}
	if out, err := e2e.Rabbitmqctl("close_connection", pid, "prelude pool test"); err != nil {
		t.Fatalf("rabbitmqctl close_connection: %v\n%s", err, out)
	}
	for i, ch := range closed {
		select {
		case err := <-ch:
			if err == nil || err.Code != 320 || !strings.Contains(err.Reason, "prelude pool test") {
				t.Fatalf("client %d: %v, want the broker's Close 320 with its text", i, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("client %d: no Close", i)
		}
	}
	roundTrip(t, dial(t, e2e.URL(addr, e2e.VhostB)), 2) // a new connection for the next client
}

// TestPoolUpdateSecret: a client's connection.update-secret goes to the
// broker on the shared connection and the broker's answer comes back to
// that client.
func TestPoolUpdateSecret(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	other := dial(t, e2e.URL(addr, e2e.VhostB))
	if err := conn.UpdateSecret(e2e.TestPassword, "rotation"); err != nil {
		t.Fatalf("update-secret: %v", err)
	}
	roundTrip(t, conn, 2)
	roundTrip(t, other, 2)
}

// TestPoolReusesChannels: with reuse_channels, short-lived publishers with
// confirms take the broker channel the one before them left, get their
// confirms counted from their own first publish, and lose no message; a
// channel used for anything else is not kept.
func TestPoolReusesChannels(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{"reuse_channels": true})))
	q := declareQueue(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	stay := dial(t, e2e.URL(addr, e2e.VhostB)) // keeps the connection between clients
	const clients = 20
	for i := range clients {
		conn := dial(t, e2e.URL(addr, e2e.VhostB))
		if err := publishConfirmed(conn, q, 3); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		mustOK(t, conn.Close())
	}
	status := func() l4amqp.PoolConnStatus {
		ps := pools(t, c, broker.Addr)
		if len(ps) != 1 || len(ps[0].Connections) != 1 {
			t.Fatalf("pools: %+v", ps)
		}
		return ps[0].Connections[0]
	}
	st := status()
	if st.Reused < clients-1 || st.Parked != 1 {
		t.Fatalf("after %d publishers: reused %d, parked %d; want %d and 1", clients, st.Reused, st.Parked, clients-1)
	}
	if n := messageCount(t, q); n != 3*clients {
		t.Fatalf("queue holds %d, want %d", n, 3*clients)
	}
	// A consumer takes the parked channel; it is not kept after it.
	consumer := dial(t, e2e.URL(addr, e2e.VhostB))
	cch := channel(t, consumer)
	deliveries, err := cch.Consume(q, "", false, false, false, false, nil)
	mustOK(t, err)
	for range 5 {
		d := <-deliveries
		mustOK(t, d.Ack(false))
	}
	mustOK(t, consumer.Close())
	waitFor(t, "the consumer's channel closed on the broker", func() bool { return status().Parked == 0 })
	// A publisher without confirms: its channel is not kept either.
	plain := dial(t, e2e.URL(addr, e2e.VhostB))
	mustOK(t, channel(t, plain).Publish("", q, false, false, amqp091.Publishing{Body: []byte("no confirm")}))
	mustOK(t, plain.Close())
	time.Sleep(100 * time.Millisecond)
	if st := status(); st.Parked != 0 {
		t.Fatalf("a channel without confirms was kept: %+v", st)
	}
	waitFor(t, "every message counted", func() bool { return messageCount(t, q) == 3*clients-5+1 })
	roundTrip(t, stay, 2)
}

// TestPoolCancelNotifyAndFlow: the broker's basic.cancel of a consumer (its
// queue deleted elsewhere) reaches the pooled client that consumed, on its
// channel, and channel.flow keeps its per-channel answer.
func TestPoolCancelNotifyAndFlow(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	_, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	q := declareQueue(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB))
	other := dial(t, e2e.URL(addr, e2e.VhostB))
	ocancel := channel(t, other).NotifyCancel(make(chan string, 1))
	conn := dial(t, e2e.URL(addr, e2e.VhostB))
	ch := channel(t, conn)
	cancels := ch.NotifyCancel(make(chan string, 1))
	_, err := ch.Consume(q, "prelude-consumer", true, false, false, false, nil)
	mustOK(t, err)
	mustOK(t, ch.Flow(true))
	direct := channel(t, dial(t, e2e.URL(e2e.RabbitAddr, e2e.VhostB)))
	_, err = direct.QueueDelete(q, false, false, false)
	mustOK(t, err)
	select {
	case tag := <-cancels:
		if tag != "prelude-consumer" {
			t.Fatalf("cancel for %q", tag)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no basic.cancel after the queue was deleted")
	}
	select {
	case tag := <-ocancel:
		t.Fatalf("another client got the cancel for %q", tag)
	default:
	}
	roundTrip(t, conn, 2)
}

// TestPoolSessionsAreDecoded: a pooled session counts its messages in the
// statistics like a relayed one, and a capture holds its frames with the
// client's own channel ids.
func TestPoolSessionsAreDecoded(t *testing.T) {
	broker := e2e.StartRelay(t, "127.0.0.1:0", e2e.RabbitAddr)
	c, addr := startProxy(t, handler(pooled(broker, e2e.VhostB, map[string]any{})))
	file := t.TempDir() + "/pooled.ndjson"
	id := startCapture(t, c, fmt.Sprintf(`{"filter": {"connection_name": "pooled-capture"}, "format": "ndjson", "file": %q}`, file))
	before := vhostCounters(amqpStats(t, c), e2e.VhostB).Messages
	bystander := dial(t, e2e.URL(addr, e2e.VhostB))
	channel(t, bystander) // the captured client's channel 1 is broker channel 2
	conn, err := amqp091.DialConfig(e2e.URL(addr, e2e.VhostB), amqp091.Config{Properties: amqp091.Table{"connection_name": "pooled-capture"}})
	mustOK(t, err)
	roundTrip(t, conn, 10)
	mustOK(t, conn.Close())
	waitFor(t, "the session's messages counted", func() bool {
		m := vhostCounters(amqpStats(t, c), e2e.VhostB).Messages
		return m.Published-before.Published == 10 && m.Delivered-before.Delivered == 10 && m.Confirmed-before.Confirmed == 10
	})
	mustDo(t, c, http.MethodDelete, "/prelude/amqp/captures/"+id, http.StatusOK)
	raw, err := os.ReadFile(file)
	mustOK(t, err)
	lines := readLines(t, raw)
	if n := count(methods(lines, "client"), "basic.publish"); n != 10 {
		t.Fatalf("capture holds %d publishes, want 10", n)
	}
	if n := count(methods(lines, "broker"), "basic.deliver"); n != 10 {
		t.Fatalf("capture holds %d deliveries, want 10", n)
	}
	for _, l := range lines {
		if l.Type == "method" && l.Channel > 1 {
			t.Fatalf("a captured frame on channel %d: the capture must show the client's ids", l.Channel)
		}
	}
}
