package stream

import (
	"context"
	"crypto/subtle"
	"io"
	"net"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Stats counts what one stream did.
type Stats struct {
	BytesSent        uint64 // stream bytes written by the application and acknowledged or in flight
	BytesReceived    uint64 // stream bytes delivered in order to the reading side
	Retransmits      uint64 // times unacknowledged data was sent again (go-back-N)
	RetransmitBytes  uint64 // bytes sent again
	WindowStalls     uint64 // Writes that had to wait for the peer to acknowledge
	Rejected         uint64 // messages dropped: bad header or wrong token (injection)
	Duplicates       uint64 // data messages dropped as already received or out of order
	MessagesSent     uint64
	MessagesReceived uint64
}

// Conn is one end of a stream. It implements net.Conn, plus CloseWrite for
// half-close. All methods are safe for concurrent use.
type Conn struct {
	cfg       Config
	t         *transport
	ch        *amqp.Channel
	local     Addr   // the queue this end receives on
	remote    Addr   // the queue the peer receives on
	service   string // the listener queue the stream was dialed to
	myToken   token  // every message to us must carry it
	peerToken token  // every message to the peer carries it

	work  chan struct{}  // capacity 1: wakes the sender
	done  chan struct{}  // closed at teardown
	loops sync.WaitGroup // the send and receive loops: nothing else uses the channel
	rdl   *deadline
	wdl   *deadline

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when readers or writers may proceed

	// Sending direction. sbuf holds the bytes [min(una,end), end).
	sbuf       []byte
	sback      []byte
	una        uint64 // oldest unacknowledged offset
	nxt        uint64 // next offset to send
	end        uint64 // offset after the last byte written
	sentMax    uint64 // highest offset sent so far (+1 for a sent FIN)
	peerLimit  uint64 // the peer accepts bytes below this offset
	finQueued  bool   // CloseWrite or Close: a FIN follows byte end
	progressAt time.Time

	// Receiving direction.
	rq       [][]byte // in-order payloads not yet read
	rqLen    int
	rnxt     uint64 // next expected offset (a received FIN counts one)
	consumed uint64 // bytes handed to Read
	rfin     bool
	advAck   uint64 // ack last sent
	advLimit uint64 // limit last sent
	ackNow   bool
	ackDue   time.Time
	gapSeen  bool // tell the peer to resend now (flagGap)
	// recovering is set after a go-back until una advances, so a burst of
	// gap reports rewinds only once.
	recovering bool

	closed       bool // Close was called
	closedAt     time.Time
	resetPending bool // send a reset, then tear down
	err          error
	tornDown     bool
	lastRecv     time.Time
	lastSend     time.Time
	stats        Stats
	onTeardown   func()
}

// established wires a stream whose handshake is complete and starts its
// goroutines. limit is the peer's initial window edge.
func newConn(cfg Config, t *transport, ch *amqp.Channel, local, remote Addr, my, peer token, limit uint64) *Conn {
	now := time.Now()
	return &Conn{
		cfg: cfg, t: t, ch: ch, local: local, remote: remote, myToken: my, peerToken: peer,
		work: make(chan struct{}, 1), done: make(chan struct{}),
		rdl: newDeadline(), wdl: newDeadline(),
		changed:   make(chan struct{}),
		peerLimit: limit, advLimit: uint64(cfg.Window),
		lastRecv: now, lastSend: now, progressAt: now,
	}
}

func (c *Conn) start(deliveries <-chan amqp.Delivery, returns chan amqp.Return, confirms chan amqp.Confirmation, closes chan *amqp.Error) {
	c.loops.Add(2)
	go func() { defer c.loops.Done(); c.receiveLoop(deliveries, returns, confirms, closes) }()
	go func() { defer c.loops.Done(); c.sendLoop() }()
}

// LocalAddr returns the private queue this end receives on.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the private queue the peer receives on.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// Service returns the listener queue the stream was dialed to.
func (c *Conn) Service() string { return c.service }

// Stats returns the stream's counters so far.
func (c *Conn) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Done is closed when the stream has ended and released its channel.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Read reads stream bytes in order. It returns io.EOF only after the peer's
// FIN and every byte before it; an aborted stream returns an error instead.
func (c *Conn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		switch {
		case c.closed:
			return 0, opError("read", c, net.ErrClosed)
		case isClosed(c.rdl.wait()):
			return 0, opError("read", c, errDeadline)
		case c.rqLen > 0:
			return c.readQueued(b), nil
		case c.rfin:
			return 0, io.EOF
		case c.err != nil:
			return 0, opError("read", c, c.err)
		case len(b) == 0:
			return 0, nil
		}
		if !c.waitLocked(c.rdl) {
			return 0, opError("read", c, errDeadline)
		}
	}
}

func (c *Conn) readQueued(b []byte) int {
	n := 0
	for n < len(b) && len(c.rq) > 0 {
		k := copy(b[n:], c.rq[0])
		n += k
		if k == len(c.rq[0]) {
			c.rq[0] = nil
			c.rq = c.rq[1:]
		} else {
			c.rq[0] = c.rq[0][k:]
		}
	}
	c.rqLen -= n
	c.consumed += uint64(n)
	if c.consumed+uint64(c.cfg.Window)-c.advLimit >= uint64(c.cfg.Window/4) {
		c.kick()
	}
	return n
}

// Write buffers b for sending. It blocks while the window is full; when the
// write deadline passes it returns how many bytes it buffered, and only
// those bytes are ever delivered.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, stalled := 0, false
	for {
		switch {
		case c.closed:
			return n, opError("write", c, net.ErrClosed)
		case c.finQueued:
			return n, opError("write", c, ErrWriteClosed)
		case c.err != nil:
			return n, opError("write", c, c.err)
		case isClosed(c.wdl.wait()):
			return n, opError("write", c, errDeadline)
		case len(b) == 0:
			return n, nil
		}
		if space := c.cfg.Window - len(c.sbuf); space > 0 {
			k := min(space, len(b))
			c.bufferSend(b[:k])
			c.end += uint64(k)
			n += k
			b = b[k:]
			c.kick()
			continue
		}
		if !stalled {
			stalled = true
			c.stats.WindowStalls++
		}
		if !c.waitLocked(c.wdl) {
			return n, opError("write", c, errDeadline)
		}
	}
}

// bufferSend appends p to the send buffer, reusing its backing array.
func (c *Conn) bufferSend(p []byte) {
	need := len(c.sbuf) + len(p)
	if need > cap(c.sbuf) {
		if cap(c.sback) >= need {
			k := copy(c.sback[:cap(c.sback)], c.sbuf)
			c.sbuf = c.sback[:k]
		} else {
			nb := make([]byte, len(c.sbuf), min(max(need, 2*cap(c.sback), 16<<10), c.cfg.Window))
			copy(nb, c.sbuf)
			c.sback, c.sbuf = nb, nb
		}
	}
	c.sbuf = append(c.sbuf, p...)
}

// waitLocked waits, with c.mu released, until the stream changes or dl
// passes; it reports false when dl passed.
func (c *Conn) waitLocked(dl *deadline) bool {
	changed := c.changed
	c.mu.Unlock()
	defer c.mu.Lock()
	select {
	case <-changed:
		return true
	case <-dl.wait():
		return false
	}
}

// broadcast wakes every waiting Read and Write. c.mu must be held.
func (c *Conn) broadcast() {
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Conn) kick() {
	select {
	case c.work <- struct{}{}:
	default:
	}
}

// CloseWrite sends a FIN after every byte written so far: the peer reads
// them, then io.EOF. Reading continues.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return opError("close", c, net.ErrClosed)
	}
	if c.err == nil && !c.finQueued {
		c.finQueued = true
		c.kick()
	}
	return nil
}

// Close ends the stream: bytes already written are still delivered (for up
// to Linger), followed by a FIN; pending and later Reads and Writes fail.
// Data arriving after Close aborts the stream with a reset, as TCP does.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.closedAt = time.Now()
	if c.rqLen > 0 {
		c.resetPending = true // unread data: the peer must learn it was not read
	}
	c.finQueued = true
	c.broadcast()
	c.kick()
	return nil
}

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.rdl.set(t)
	c.wdl.set(t)
	return nil
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error { c.rdl.set(t); return nil }

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { c.wdl.set(t); return nil }

// fail ends the stream with err; with reset it tells the peer first.
// c.mu must be held.
func (c *Conn) fail(err error, reset bool) {
	if c.err == nil {
		c.err = err
	}
	if reset && !c.tornDown {
		c.resetPending = true
		c.kick()
		c.broadcast()
		return
	}
	c.teardownLocked()
}

// teardownLocked releases the stream's channel (which deletes its queue)
// and wakes everyone. c.mu must be held.
func (c *Conn) teardownLocked() {
	if c.tornDown {
		return
	}
	c.tornDown = true
	if c.err == nil && !(c.rfin && c.finAcked()) {
		c.err = ErrReset
	}
	close(c.done)
	c.broadcast()
	ch, t, hook := c.ch, c.t, c.onTeardown
	go func() {
		// RabbitMQ fails the whole connection (504 CHANNEL_ERROR) on a frame
		// that reaches a channel after its close, so the channel closes only
		// once neither loop can send on it any more.
		c.loops.Wait()
		if ch != nil {
			_ = ch.Close()
		}
		if t != nil {
			t.release()
		}
		if hook != nil {
			hook()
		}
	}()
}

func (c *Conn) finAcked() bool { return c.finQueued && c.una == c.end+1 }

// receiveLoop handles everything the broker sends on the stream's channel.
func (c *Conn) receiveLoop(deliveries <-chan amqp.Delivery, returns chan amqp.Return, confirms chan amqp.Confirmation, closes chan *amqp.Error) {
	// Deliveries are acknowledged to the broker in batches: every quarter
	// of the prefetch, or deliveryAckDelay after the first unacknowledged
	// one, which saves the broker an ack per message in interactive traffic.
	var lastTag uint64
	pending := 0
	batch := max(c.cfg.prefetch()/4, 1)
	ackTimer := time.NewTimer(time.Hour)
	ackTimer.Stop()
	defer ackTimer.Stop()
	ackDeliveries := func() {
		if pending > 0 {
			_ = c.ch.Ack(lastTag, true)
			pending = 0
		}
	}
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				c.lostChannel(closes)
				return
			}
			c.handleDelivery(d.Body)
			lastTag = d.DeliveryTag
			pending++
			if pending >= batch {
				ackTimer.Stop()
				ackDeliveries()
			} else if pending == 1 {
				ackTimer.Reset(deliveryAckDelay)
			}
		case <-ackTimer.C:
			ackDeliveries()
		case _, ok := <-returns:
			if !ok {
				returns = nil // the channel closed; deliveries will say why
				continue
			}
			// Mandatory publish unroutable: the peer's queue is gone.
			c.mu.Lock()
			c.fail(ErrReset, false)
			c.mu.Unlock()
		case cf, ok := <-confirms:
			if !ok {
				confirms = nil
				continue
			}
			if !cf.Ack {
				c.mu.Lock()
				c.goBack()
				c.ackNow = true
				c.kick()
				c.mu.Unlock()
			}
		case err, ok := <-closes:
			if !ok {
				closes = nil
				continue
			}
			c.mu.Lock()
			c.fail(c.brokerErr(err), false)
			c.mu.Unlock()
		case <-c.t.closed:
			c.mu.Lock()
			c.fail(&brokerError{c.t.err()}, false)
			c.mu.Unlock()
			return
		case <-c.done:
			return
		}
	}
}

func (c *Conn) brokerErr(err *amqp.Error) error {
	if err == nil {
		return &brokerError{amqp.ErrClosed}
	}
	return &brokerError{err}
}

func (c *Conn) lostChannel(closes chan *amqp.Error) {
	var cause error = amqp.ErrClosed
	select {
	case err, ok := <-closes:
		if ok && err != nil {
			cause = err
		}
	case <-time.After(100 * time.Millisecond):
	}
	if terr := c.t.err(); terr != nil {
		cause = terr
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail(&brokerError{cause}, false)
}

// handleDelivery applies one message from the peer.
func (c *Conn) handleDelivery(body []byte) {
	h, payload, err := parseMessage(body)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tornDown {
		return
	}
	if err != nil || subtle.ConstantTimeCompare(h.token[:], c.myToken[:]) != 1 {
		c.stats.Rejected++
		return
	}
	c.stats.MessagesReceived++
	c.lastRecv = time.Now()
	switch h.kind {
	case kindData:
		c.applyAck(h)
		c.applyData(h, payload)
	case kindAck:
		c.applyAck(h)
		if h.flags&flagGap != 0 && h.ack == c.una && !c.recovering {
			c.goBack()
		}
	case kindReset:
		c.fail(ErrReset, false)
		return
	default:
		c.stats.Rejected++
		return
	}
	c.maybeFinish()
}

// applyAck takes the peer's ack and limit fields.
func (c *Conn) applyAck(h header) {
	if h.ack > c.una && h.ack <= c.sentMax {
		drop := min(h.ack, c.end) - min(c.una, c.end)
		c.sbuf = c.sbuf[drop:]
		if len(c.sbuf) == 0 {
			c.sbuf = c.sback[:0]
		}
		c.una = h.ack
		c.recovering = false
		if c.nxt < c.una {
			c.nxt = c.una
		}
		c.progressAt = time.Now()
		c.broadcast()
		c.kick()
	}
	if h.limit > c.peerLimit {
		c.peerLimit = h.limit
		c.kick()
	}
}

// applyData accepts the next in-order bytes and drops the rest.
func (c *Conn) applyData(h header, payload []byte) {
	fin := h.flags&flagFIN != 0
	end := h.seq + uint64(len(payload))
	if h.seq > c.rnxt || c.rfin {
		c.stats.Duplicates++
		c.ackNow = true
		c.gapSeen = c.gapSeen || h.seq > c.rnxt
		c.kick()
		return
	}
	if skip := c.rnxt - h.seq; skip < uint64(len(payload)) {
		data := payload[skip:]
		if end > c.advLimit {
			c.fail(ErrReset, true) // beyond the window we granted: a broken peer
			return
		}
		if c.closed {
			c.fail(ErrReset, true) // nobody will read it
			return
		}
		c.rq = append(c.rq, data)
		c.rqLen += len(data)
		c.rnxt = end
		c.stats.BytesReceived += uint64(len(data))
		c.broadcast()
	} else if !(fin && end == c.rnxt) {
		c.stats.Duplicates++
		c.ackNow = true
		c.kick()
		return
	}
	if fin {
		c.rfin = true
		c.rnxt++
		c.ackNow = true
		c.broadcast()
	}
	if c.ackDue.IsZero() {
		c.ackDue = time.Now().Add(maxAckDelay)
	}
	c.kick()
}

// goBack rewinds sending to the oldest unacknowledged byte.
func (c *Conn) goBack() {
	if c.nxt > c.una {
		c.stats.Retransmits++
		c.stats.RetransmitBytes += min(c.nxt, c.end) - min(c.una, c.end)
		c.nxt = c.una
		c.progressAt = time.Now()
		c.recovering = true
		c.kick()
	}
}

// maybeFinish tears down a stream whose both directions are complete. A
// closed end whose FIN is acknowledged does not wait for the peer's FIN: it
// resets, so the peer's later writes fail instead of vanishing.
func (c *Conn) maybeFinish() {
	if c.tornDown || !c.finAcked() {
		return
	}
	if c.rfin && c.advAck >= c.rnxt {
		c.teardownLocked()
		return
	}
	if c.closed && !c.rfin {
		c.resetPending = true
		c.kick()
	}
}

// sendLoop publishes everything the stream owes the peer, and runs its
// timers: delayed acks, retransmission, keepalive, liveness, linger.
func (c *Conn) sendLoop() {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	buf := make([]byte, 0, headerLen+c.cfg.MessageSize)
	for {
		if wait := c.t.publishable(); wait != nil {
			select {
			case <-wait:
			case <-c.done:
				return
			}
		}
		var msg []byte
		var last bool
		var wake time.Duration
		c.mu.Lock()
		msg, last, wake = c.nextMessage(buf[:0], time.Now())
		c.mu.Unlock()
		if msg != nil && c.cfg.lose != nil && c.cfg.lose(msg) {
			continue // a test's stand-in for a publish the broker lost
		}
		if msg != nil {
			err := c.ch.PublishWithContext(context.Background(), "", c.remote.Queue, true, false, amqp.Publishing{Body: msg})
			c.mu.Lock()
			c.lastSend = time.Now()
			c.stats.MessagesSent++
			if err != nil {
				c.fail(&brokerError{err}, false)
			} else if last {
				c.teardownLocked()
			} else {
				c.maybeFinish()
			}
			c.mu.Unlock()
			continue
		}
		if wake <= 0 {
			wake = time.Hour
		}
		timer.Reset(wake)
		select {
		case <-c.work:
		case <-timer.C:
		case <-c.done:
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// nextMessage returns the next message to publish, whether the stream ends
// once it is sent, or else how long until a timer needs attention.
// c.mu must be held.
func (c *Conn) nextMessage(buf []byte, now time.Time) ([]byte, bool, time.Duration) {
	if c.tornDown {
		return nil, false, 0
	}
	if c.resetPending {
		c.resetPending = false
		return c.message(buf, kindReset, 0, nil), true, 0
	}
	if now.Sub(c.lastRecv) >= c.cfg.KeepaliveTimeout {
		c.fail(ErrPeerTimeout, true)
		return nil, false, 0
	}
	if c.closed && now.Sub(c.closedAt) >= c.cfg.Linger {
		c.fail(ErrReset, true)
		return nil, false, 0
	}
	if c.nxt > c.una && now.Sub(c.progressAt) >= c.cfg.RetransmitTimeout {
		c.goBack()
	}
	if msg := c.nextData(buf, now); msg != nil {
		return msg, false, 0
	}
	if c.ackWanted(now) {
		gap := c.gapSeen
		msg := c.message(buf, kindAck, c.nxt, nil)
		if gap {
			msg[3] |= byte(flagGap)
		}
		return msg, false, 0
	}
	// Nothing to send: sleep until the nearest timer.
	wake := c.cfg.Keepalive - now.Sub(c.lastSend)
	wake = min(wake, c.cfg.KeepaliveTimeout-now.Sub(c.lastRecv))
	if !c.ackDue.IsZero() {
		wake = min(wake, c.ackDue.Sub(now))
	}
	if c.nxt > c.una {
		wake = min(wake, c.cfg.RetransmitTimeout-now.Sub(c.progressAt))
	}
	if c.closed {
		wake = min(wake, c.cfg.Linger-now.Sub(c.closedAt))
	}
	return nil, false, max(wake, time.Millisecond)
}

// nextData returns the next data message the window allows, if any.
func (c *Conn) nextData(buf []byte, now time.Time) []byte {
	if c.nxt < c.end && c.nxt < c.peerLimit {
		if c.nxt == c.una {
			c.progressAt = now
		}
		k := min(c.end, c.peerLimit, c.nxt+uint64(c.cfg.MessageSize)) - c.nxt
		off := c.nxt - min(c.una, c.end)
		seq := c.nxt
		c.nxt += k
		fin := c.finQueued && c.nxt == c.end
		if fin {
			c.nxt++
		}
		c.sentMax = max(c.sentMax, c.nxt)
		if seq+k > c.stats.BytesSent {
			c.stats.BytesSent = seq + k
		}
		return c.data(buf, seq, c.sbuf[off:off+k], fin)
	}
	if c.finQueued && c.nxt == c.end {
		if c.nxt == c.una {
			c.progressAt = now
		}
		c.nxt++
		c.sentMax = max(c.sentMax, c.nxt)
		return c.data(buf, c.end, nil, true)
	}
	return nil
}

func (c *Conn) data(buf []byte, seq uint64, payload []byte, fin bool) []byte {
	msg := c.message(buf, kindData, seq, payload)
	if fin {
		msg[3] |= byte(flagFIN)
	}
	return msg
}

// ackWanted reports whether the peer needs a fresh ack or window now.
func (c *Conn) ackWanted(now time.Time) bool {
	quarter := uint64(c.cfg.Window / 4)
	switch {
	case c.ackNow:
		return true
	case c.rnxt-c.advAck >= quarter && c.rnxt > c.advAck:
		return true
	case c.consumed+uint64(c.cfg.Window)-c.advLimit >= quarter:
		return true
	case !c.ackDue.IsZero() && !now.Before(c.ackDue):
		return true
	case now.Sub(c.lastSend) >= c.cfg.Keepalive:
		return true
	}
	return false
}

// message builds a message carrying the current ack and limit, which it
// records as advertised. c.mu must be held.
func (c *Conn) message(buf []byte, kind byte, seq uint64, payload []byte) []byte {
	limit := c.consumed + uint64(c.cfg.Window)
	c.advAck, c.advLimit = c.rnxt, limit
	c.ackNow, c.ackDue, c.gapSeen = false, time.Time{}, false
	buf = appendHeader(buf, header{kind: kind, token: c.peerToken, seq: seq, ack: c.rnxt, limit: limit})
	return append(buf, payload...)
}
