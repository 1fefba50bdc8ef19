package l4amqp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/relay"
)

// brokerChannel is whoever owns a channel of a pooled broker connection:
// a client's channel, or the proxy's own (deleting a client's exclusive
// queues). fromBroker runs on the connection's reader goroutine; it must
// not block on a client.
type brokerChannel interface {
	fromBroker(f amqp.Frame)
}

// upConn is one pooled broker connection. Its reader goroutine hands each
// frame to the owner of its channel; clients write their frames to it
// directly, under wmu, in whole batches; frames the reader or a leaving
// client must send go through the keeper goroutine, which also sends the
// proxy's heartbeats.
type upConn struct {
	pool   *pool
	index  int
	digest [32]byte
	member string
	opened time.Time

	ready chan struct{} // closed once the handshake ended; then err tells how
	err   error

	// Set by the handshake, read-only after ready.
	conn       net.Conn
	w          io.Writer
	frameMax   uint32
	channelMax uint16
	heartbeat  time.Duration
	name       string

	wmu sync.Mutex // serializes writes to the broker

	mu         sync.Mutex
	state      int  // connOpening, connOpen, connClosing, connDead
	used       int  // channels in use, plus one per client without any
	maxUsed    int  // capacity: max_channels_per_connection within the broker's channel_max
	maxOpt     int  // max_channels_per_connection when the connection was opened (0: none)
	reuseOpt   bool // reuse_channels then: parked channels need ids beyond the capacity
	clients    map[*poolClient]struct{}
	owners     []atomic.Pointer[ownerBox] // by broker channel id
	next       uint16
	inUse      int // channels with an owner
	blocked    string
	idleSince  time.Time
	ctrl       []ctrlWrite
	secretWait []*poolClient
	exclusive  map[string]*poolClient // queues clients declared exclusive, by name
	parked     []*parkedChannel       // broker channels kept for reuse (reuse_channels)
	reused     uint64                 // channels given to a client from parked

	kick chan struct{}
	done chan struct{} // closed when the connection is dead
}

// ownerBox lets an interface live in an atomic.Pointer.
type ownerBox struct{ brokerChannel }

type ctrlWrite struct {
	b     []byte
	after func() // runs once b is written (or the connection is dead)
}

// Connection states.
const (
	connOpening = iota
	connOpen
	connClosing
	connDead
)

// newUpConn is a connection of p about to be opened; p.mu is held.
func newUpConn(p *pool, index int, digest [32]byte, member string) *upConn {
	opt := p.opts.MaxChannelsPerConnection
	max := opt
	if max == 0 {
		max = DefaultChannelMax
	}
	return &upConn{pool: p, index: index, digest: digest, member: member, maxUsed: max, maxOpt: opt, reuseOpt: p.opts.ReuseChannels,
		ready: make(chan struct{}), clients: map[*poolClient]struct{}{},
		kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// reserveClient takes one unit of capacity for a client about to attach.
func (c *upConn) reserveClient() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state > connOpen || c.used >= c.maxUsed {
		return false
	}
	c.used++
	return true
}

// unreserve gives back a reservation whose client never attached.
func (c *upConn) unreserve() {
	c.mu.Lock()
	c.used--
	c.markIdle()
	c.mu.Unlock()
}

func (c *upConn) capacity() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.maxUsed
}

// waitOpen waits for the handshake of a connection the client joined.
func (c *upConn) waitOpen(ctx context.Context) error {
	select {
	case <-c.ready:
		if c.err != nil {
			c.unreserve()
		}
		return c.err
	case <-ctx.Done():
		c.unreserve()
		return ctx.Err()
	}
}

// open dials the member and plays the client's handshake to it (its
// credentials, its vhost) with the proxy's own client properties and
// limits. A broker refusal comes back through farm.Final with the
// broker's Close, for every client waiting on this connection.
func (c *upConn) open(ctx context.Context, s *session, connect farm.ConnectFunc) (err error) {
	defer func() {
		c.err = err
		if err != nil {
			c.mu.Lock()
			c.state = connDead
			c.mu.Unlock()
			close(c.done)
		}
		close(c.ready)
	}()
	conn, err := connect(ctx)
	if err != nil {
		return err
	}
	if err := c.handshake(ctx, s, conn); err != nil {
		_ = conn.Close()
		return err
	}
	c.conn, c.opened = conn, time.Now()
	c.mu.Lock()
	c.state = connOpen
	c.owners = make([]atomic.Pointer[ownerBox], int(c.channelMax)+1)
	c.mu.Unlock()
	go c.read(pooledFrames(conn))
	go c.keep()
	return nil
}

// pooledFrames reads a pooled connection's frames after its handshake.
func pooledFrames(conn net.Conn) *amqp.FrameReader {
	fr := amqp.NewFrameReader(relay.RawIO(conn))
	fr.Reserve(poolReadBuffer)
	return fr
}

// poolReadBuffer is each side's read buffer on a pooled session: one read
// brings a few hundred small frames.
const poolReadBuffer = 16 << 10

func (c *upConn) handshake(ctx context.Context, s *session, conn net.Conn) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	rw := relay.RawIO(conn)
	fr := amqp.NewFrameReader(rw)
	if _, err := rw.Write(amqp.Header091); err != nil {
		return err
	}
	if _, err := readBrokerMethod(rw, fr, amqp.MethodStart); err != nil {
		return err
	}
	c.name = fmt.Sprintf("%s pool %s #%d from %s", productName, c.pool.key.vhost, c.index, conn.LocalAddr())
	so := *s.startOk
	so.ClientProperties = poolClientProperties(c.name, s.cx.LocalAddr())
	out, err := amqp.AppendMethodFrame(nil, 0, &so)
	if err != nil {
		return err
	}
	if _, err := rw.Write(out); err != nil {
		return err
	}
	tm, err := readBrokerMethod(rw, fr, amqp.MethodTune)
	if err != nil {
		return err
	}
	tune := *tm.(*amqp.Tune)
	s.h.limits.learn(c.member, tune)
	ours := amqp.TuneOk{ChannelMax: lower(tune.ChannelMax, DefaultChannelMax),
		FrameMax: lower(tune.FrameMax, s.h.FrameMax), Heartbeat: lower(tune.Heartbeat, *s.h.Heartbeat)}
	if above(s.tuneOk.FrameMax, ours.FrameMax) {
		return farm.Final(closeWith(outcomeRefused, amqp.ReplyConnectionForced,
			"CONNECTION_FORCED - broker %s allows frame_max %d, below the %d this connection negotiated; reconnect to get the broker's limits",
			c.member, ours.FrameMax, s.tuneOk.FrameMax))
	}
	out, _ = amqp.AppendMethodFrame(nil, 0, &ours)
	out, _ = amqp.AppendMethodFrame(out, 0, &amqp.Open{VirtualHost: s.open.VirtualHost})
	if _, err := rw.Write(out); err != nil {
		return err
	}
	if _, err := readBrokerMethod(rw, fr, amqp.MethodOpenOk); err != nil {
		return err
	}
	if len(fr.Buffered()) > 0 {
		return errors.New("broker sent frames after Connection.Open-Ok before any channel was open")
	}
	_ = conn.SetDeadline(time.Time{})
	c.w = rw
	c.frameMax, c.channelMax = ours.FrameMax, ours.ChannelMax
	c.heartbeat = time.Duration(ours.Heartbeat) * time.Second
	c.mu.Lock()
	c.maxUsed = int(c.channelMax)
	if c.reuseOpt && c.maxUsed > 2*maxParked {
		c.maxUsed -= maxParked
	}
	if m := c.maxOpt; m > 0 && m < c.maxUsed {
		c.maxUsed = m
	}
	c.mu.Unlock()
	return nil
}

// lower is the smaller of two negotiated limits, where 0 means none.
func lower[T uint16 | uint32](a, b T) T {
	if a == 0 || (b != 0 && b < a) {
		return b
	}
	return a
}

// poolClientProperties name a pooled connection to the broker (its
// management UI lists it by connection_name) and ask for every capability
// a client may rely on; each client gets only what it asked for.
func poolClientProperties(name string, proxy net.Addr) amqp.Table {
	caps := amqp.Table{
		{Name: "publisher_confirms", Value: true},
		{Name: "exchange_exchange_bindings", Value: true},
		{Name: "basic.nack", Value: true},
		{Name: "consumer_cancel_notify", Value: true},
		{Name: "connection.blocked", Value: true},
		{Name: "authentication_failure_close", Value: true},
		{Name: "per_consumer_qos", Value: true},
	}
	return amqp.Table{
		{Name: "product", Value: productName},
		{Name: "version", Value: version()},
		{Name: "platform", Value: "Go"},
		{Name: "connection_name", Value: name},
		{Name: "capabilities", Value: caps},
		{Name: propProxy, Value: productName + " " + version()},
		{Name: propProxyAddress, Value: remoteString(proxy)},
	}
}

// attach makes pc a client of the connection (its reservation taken by
// acquire) and tells it whether the broker has blocked publishers.
func (c *upConn) attach(pc *poolClient) (blocked string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != connOpen {
		c.used--
		return "", false
	}
	c.clients[pc] = struct{}{}
	return c.blocked, true
}

// detach removes a client that left; its channels may still be closing.
func (c *upConn) detach(pc *poolClient, hadChannels bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.clients, pc)
	if !hadChannels {
		c.used--
	}
	for i, w := range c.secretWait {
		if w == pc {
			c.secretWait = append(c.secretWait[:i], c.secretWait[i+1:]...)
			break
		}
	}
	c.markIdle()
}

// markIdle notes when the connection lost its last client. c.mu is held.
func (c *upConn) markIdle() {
	if len(c.clients) == 0 && c.idleSince.IsZero() {
		c.idleSince = time.Now()
	}
}

func (c *upConn) idleFor(now time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != connOpen || len(c.clients) > 0 || c.used > 0 || c.idleSince.IsZero() {
		return 0
	}
	return now.Sub(c.idleSince)
}

// claimQueue records that pc declared queue name exclusive.
func (c *upConn) claimQueue(name string, pc *poolClient) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exclusive == nil {
		c.exclusive = map[string]*poolClient{}
	}
	c.exclusive[name] = pc
}

// exclusiveOwner is the client that declared queue name exclusive, or nil.
func (c *upConn) exclusiveOwner(name string) *poolClient {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exclusive[name]
}

// releaseQueue forgets pc's claim on name.
func (c *upConn) releaseQueue(name string, pc *poolClient) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exclusive[name] == pc {
		delete(c.exclusive, name)
	}
}

// errNoChannel: the connection has no channel to spare for a client.
var errNoChannel = errors.New("no channel to spare")

// allocChannel gives owner a free broker channel id. grow says whether
// the channel takes capacity of its own (a client's second channel and
// after; a client's first uses its reservation).
func (c *upConn) allocChannel(owner brokerChannel, grow bool) (uint16, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != connOpen {
		return 0, errConnGone
	}
	if grow && c.used >= c.maxUsed {
		return 0, errNoChannel
	}
	n := int(c.channelMax)
	for i := 0; i < n; i++ {
		c.next = c.next%uint16(n) + 1
		if c.owners[c.next].Load() == nil {
			c.owners[c.next].Store(&ownerBox{owner})
			c.inUse++
			if grow {
				c.used++
			}
			c.idleSince = time.Time{}
			return c.next, nil
		}
	}
	return 0, errNoChannel
}

// freeChannel releases broker channel id once its close handshake is
// over; shrink gives back the capacity it took.
func (c *upConn) freeChannel(id uint16, shrink bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if int(id) < len(c.owners) && c.owners[id].Swap(nil) != nil {
		c.inUse--
		if shrink {
			c.used--
		}
		c.markIdle()
	}
}

var errConnGone = errors.New("the pooled broker connection is closed")

// write sends whole frames to the broker.
func (c *upConn) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := c.w.Write(b)
	return err
}

// control queues frames for the keeper to send; after runs once they are
// written, or the connection died. For frames that must not wait on a
// client or hold its lock, and frees that must follow the frame.
func (c *upConn) control(b []byte, after func()) {
	c.mu.Lock()
	if c.state == connDead {
		c.mu.Unlock()
		if after != nil {
			after()
		}
		return
	}
	c.ctrl = append(c.ctrl, ctrlWrite{b, after})
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// keep sends queued control frames and the proxy's heartbeats until the
// connection dies.
func (c *upConn) keep() {
	var beat <-chan time.Time
	if c.heartbeat > 0 {
		t := time.NewTicker(c.heartbeat / 2)
		defer t.Stop()
		beat = t.C
	}
	heartbeat := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeartbeat})
	for {
		select {
		case <-c.done:
			c.flushControl(true)
			return
		case <-beat:
			_ = c.write(heartbeat)
		case <-c.kick:
			c.flushControl(false)
		}
	}
}

func (c *upConn) flushControl(dead bool) {
	c.mu.Lock()
	q := c.ctrl
	c.ctrl = nil
	c.mu.Unlock()
	for _, w := range q {
		if !dead {
			if err := c.write(w.b); err != nil {
				dead = true
				_ = c.conn.Close()
			}
		}
		if w.after != nil {
			w.after()
		}
	}
}

// read hands each broker frame to its channel's owner until the
// connection ends, then tells every client.
func (c *upConn) read(fr *amqp.FrameReader) {
	var why *amqp.Close
	var err error
	for {
		if c.heartbeat > 0 && !fr.Ready(c.frameMax) {
			_ = c.conn.SetReadDeadline(time.Now().Add(3 * c.heartbeat))
		}
		var f amqp.Frame
		if f, err = fr.Next(c.frameMax); err != nil {
			break
		}
		if f.Channel != 0 {
			if int(f.Channel) < len(c.owners) {
				if o := c.owners[f.Channel].Load(); o != nil {
					o.fromBroker(f)
				}
			}
			continue
		}
		if f.Type != amqp.FrameMethod {
			continue // heartbeats: the deadline above is the liveness check
		}
		var done bool
		if why, done = c.connectionMethod(f); done {
			break
		}
	}
	c.die(why, err)
}

// connectionMethod handles the broker's channel-0 methods. It reports
// true when the connection is over: the broker closed it (why is its
// Close) or acknowledged the proxy's Close.
func (c *upConn) connectionMethod(f amqp.Frame) (why *amqp.Close, done bool) {
	if len(f.Payload) < 4 || binary.BigEndian.Uint16(f.Payload) != amqp.ClassConnection {
		return nil, false
	}
	switch binary.BigEndian.Uint16(f.Payload[2:]) {
	case amqp.MethodClose:
		m, err := amqp.ParseMethod(f.Payload)
		cl, ok := m.(*amqp.Close)
		if err != nil || !ok {
			cl = &amqp.Close{ReplyCode: amqp.ReplyInternalError, ReplyText: "INTERNAL_ERROR - the broker closed the connection"}
		}
		b, _ := amqp.AppendMethodFrame(nil, 0, &amqp.CloseOk{})
		_ = c.write(b)
		return cl, true
	case amqp.MethodCloseOk:
		return nil, true
	case amqp.MethodConnectionBlocked, amqp.MethodConnectionUnblocked:
		c.broadcastBlocked(f)
	case amqp.MethodConnectionUpdateSecret + 1: // update-secret-ok
		c.mu.Lock()
		var pc *poolClient
		if len(c.secretWait) > 0 {
			pc, c.secretWait = c.secretWait[0], c.secretWait[1:]
		}
		c.mu.Unlock()
		if pc != nil {
			pc.deliver(0, f)
		}
	}
	return nil, false
}

// broadcastBlocked passes Connection.Blocked and Unblocked to every client
// that said it understands them (capability connection.blocked).
func (c *upConn) broadcastBlocked(f amqp.Frame) {
	blocked := binary.BigEndian.Uint16(f.Payload[2:]) == amqp.MethodConnectionBlocked
	c.mu.Lock()
	c.blocked = ""
	if blocked {
		c.blocked = "blocked"
		if _, _, args, err := amqp.DecodeArgs(f.Payload); err == nil && len(args) == 1 {
			if r, _ := args[0].Value.(string); r != "" {
				c.blocked = r
			}
		}
	}
	clients := c.clientList()
	c.mu.Unlock()
	for _, pc := range clients {
		if pc.wantsBlocked {
			pc.deliver(0, f)
		}
	}
}

func (c *upConn) clientList() []*poolClient {
	out := make([]*poolClient, 0, len(c.clients))
	for pc := range c.clients {
		out = append(out, pc)
	}
	return out
}

// die ends the connection and every client on it: each gets the broker's
// Close, or 320 when the connection was lost.
func (c *upConn) die(why *amqp.Close, err error) {
	c.mu.Lock()
	wasClosing := c.state == connClosing
	c.state = connDead
	clients := c.clientList()
	c.mu.Unlock()
	_ = c.conn.Close()
	close(c.done)
	c.pool.remove(c)
	if why == nil && !wasClosing {
		text := "the broker connection was lost"
		if err != nil && !errors.Is(err, io.EOF) {
			text += ": " + trimAMQP(err)
		}
		why = &amqp.Close{ReplyCode: amqp.ReplyConnectionForced, ReplyText: "CONNECTION_FORCED - " + text}
	}
	for _, pc := range clients {
		pc.brokerGone(why)
	}
}

// retire closes an idle connection; it reports false if a client came.
func (c *upConn) retire() bool {
	c.mu.Lock()
	if c.state != connOpen || len(c.clients) > 0 || c.used > 0 {
		c.mu.Unlock()
		return false
	}
	c.state = connClosing
	c.mu.Unlock()
	b, _ := amqp.AppendMethodFrame(nil, 0, &amqp.Close{ReplyCode: amqp.ReplySuccess, ReplyText: "idle pooled connection closed by the proxy"})
	c.control(b, nil)
	time.AfterFunc(5*time.Second, func() { _ = c.conn.Close() }) // no Close-Ok: drop it anyway
	return true
}

func (c *upConn) status() PoolConnStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := PoolConnStatus{Name: c.name, Opened: c.opened, Clients: len(c.clients), Channels: c.inUse,
		Capacity: c.maxUsed, Blocked: c.blocked, Parked: len(c.parked), Reused: c.reused}
	st.State = [...]string{"opening", "open", "closing", "closed"}[c.state]
	if c.state == connOpen || c.state == connClosing {
		st.Local = localString(c.conn)
	}
	return st
}
