package l4amqp

import (
	"encoding/binary"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// poolClient is one client session on a pooled broker connection: its
// channels mapped onto broker channels, its frames checked before they
// reach the shared connection, and the broker's frames for it queued to a
// writer goroutine of its own, so that a slow client never holds up the
// connection's reader.
type poolClient struct {
	s            *session
	c            *upConn
	conn         net.Conn // the client's socket, to close or unblock
	frameMax     uint32   // the client's negotiated frame_max
	wantsBlocked bool     // capability connection.blocked
	reuseOn      bool     // reuse_channels
	watch        *watch   // statistics, captures and traces; nil when nothing looks
	backlogMax   int

	mu        sync.Mutex // guards what follows, and check
	check     amqp.ClientChannels
	chans     map[uint16]*pooledChannel // by the client's channel id
	exclusive map[string]struct{}       // exclusive queues it declared
	batch     []byte                    // checked frames not yet written to the broker
	closing   bool                      // a Connection.Close went to the client: only its Close-Ok counts now

	out     sync.Mutex // guards outBuf and outDone
	wmu     sync.Mutex // held while writing to the client's socket
	replies []byte     // the proxy's own answers, sent by the client's goroutine; only it uses this
	outBuf  []byte
	outDone bool
	outKick chan struct{}
	wrote   chan struct{} // closed when the writer has ended

	refusal  atomic.Value // the isolation reason a refused client was closed for
	bytesIn  atomic.Int64
	bytesOut atomic.Int64
	ended    atomic.Value // how the session ended (closeClean, ...)
}

// pooledChannel is a client channel and the broker channel it is mapped to.
type pooledChannel struct {
	pc       *poolClient
	id, up   uint16
	partial  []byte // a message not yet whole: method, header, bodies so far
	declares []bool // exclusive flag of each queue.declare awaiting declare-ok
	// Broker side of the close handshake.
	closeSent    bool // a channel.close went to the broker
	brokerClosed bool // the broker sent channel.close; no close-ok yet
	abandoned    bool // the client left, or the proxy closed it: closing for good
	shrink       bool // once free, its capacity goes back (see upConn.freeChannel)
	reuse        reuseState
}

func newPoolClient(s *session, c *upConn, opts PoolOptions) *poolClient {
	pc := &poolClient{s: s, c: c, conn: s.cx.Conn, chans: map[uint16]*pooledChannel{},
		exclusive: map[string]struct{}{}, outKick: make(chan struct{}, 1), wrote: make(chan struct{}),
		backlogMax: int(opts.MaxClientBacklog), reuseOn: opts.ReuseChannels}
	pc.frameMax = s.tuneOk.FrameMax
	if pc.frameMax == 0 {
		pc.frameMax = s.offered.FrameMax
	}
	pc.check = amqp.ClientChannels{ChannelMax: s.tuneOk.ChannelMax, MaxContent: uint64(opts.MaxMessageSize)}
	if pc.check.ChannelMax == 0 {
		pc.check.ChannelMax = s.offered.ChannelMax
	}
	if caps, ok := s.startOk.ClientProperties.Get("capabilities"); ok {
		if t, ok := caps.(amqp.Table); ok {
			v, _ := t.Get("connection.blocked")
			pc.wantsBlocked, _ = v.(bool)
		}
	}
	return pc
}

// Ways a pooled client is refused after its handshake (isolation), as the
// pool's refusal counters name them.
func refusalReason(code uint16) string {
	switch code {
	case amqp.ReplyFrameError:
		return "frame_error"
	case amqp.ReplySyntaxError:
		return "syntax_error"
	case amqp.ReplyCommandInvalid:
		return "command_invalid"
	case amqp.ReplyChannelError:
		return "channel_error"
	case amqp.ReplyUnexpectedFrame:
		return "unexpected_frame"
	case amqp.ReplyContentTooLarge:
		return "message_too_large"
	case amqp.ReplyNotImplemented:
		return "not_implemented"
	}
	return "not_allowed"
}

// run relays the client until it leaves, is refused or its broker
// connection ends. The Open-Ok has been sent.
func (pc *poolClient) run() {
	go pc.writeLoop()
	pc.readLoop()
	pc.flushReplies() // a Close-Ok, say
	pc.leave()
	pc.finishWriter()
}

// readLoop checks and forwards the client's frames. Frames are written to
// the broker in batches: when no further frame is buffered, or a batch is
// large.
func (pc *poolClient) readLoop() {
	fr := pc.s.frames
	fr.Reserve(poolReadBuffer)
	hb := time.Duration(pc.s.tuneOk.Heartbeat) * time.Second
	for {
		if !fr.Ready(pc.frameMax) {
			if err := pc.flush(); err != nil {
				pc.ended.CompareAndSwap(nil, closeBrokerDropped)
				return
			}
			pc.flushReplies()
			if hb > 0 {
				_ = pc.conn.SetReadDeadline(time.Now().Add(3 * hb))
			}
		}
		f, err := fr.Next(pc.frameMax)
		if err != nil {
			pc.readFailed(err)
			return
		}
		if pc.watch != nil {
			pc.watch.fromClient(fr.LastFrame())
		}
		pc.bytesIn.Add(int64(len(f.Payload)) + amqp.FrameOverhead)
		if pc.handle(f) {
			return
		}
	}
}

// readFailed ends the read loop on a socket error or a frame the reader
// refuses (too large, bad frame-end), refusing the client in the protocol
// when it can still read.
func (pc *poolClient) readFailed(err error) {
	pc.mu.Lock()
	closing := pc.closing
	pc.mu.Unlock()
	switch {
	case closing:
		pc.ended.CompareAndSwap(nil, closeSevered)
	case errors.Is(err, amqp.ErrFrameTooLarge), errors.Is(err, amqp.ErrMalformed):
		pc.refuse(&amqp.Violation{Code: amqp.ReplyFrameError, Text: "FRAME_ERROR - " + trimAMQP(err)})
		pc.waitCloseOk()
	default:
		pc.ended.CompareAndSwap(nil, closeClientDropped)
	}
}

// handle acts on one client frame; it reports true when the client is
// done (its Close, its Close-Ok to the proxy's Close, or a refusal).
func (pc *poolClient) handle(f amqp.Frame) bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.closing {
		return isCloseOrCloseOk(f)
	}
	ck, err := pc.check.Check(f)
	if err != nil {
		var v *amqp.Violation
		if !errors.As(err, &v) {
			v = &amqp.Violation{Code: amqp.ReplyInternalError, Text: "INTERNAL_ERROR - " + err.Error()}
		}
		pc.refuseLocked(v)
		return false // read on until its Close-Ok
	}
	switch ck.Step {
	case amqp.StepHeartbeat, amqp.StepDrop:
	case amqp.StepConnection:
		return pc.connectionMethod(f, ck)
	case amqp.StepChannelOpen:
		pc.openChannel(f)
	case amqp.StepChannelClose:
		ch := pc.chans[f.Channel]
		if pc.parkOrClose(ch) {
			delete(pc.chans, f.Channel)
			pc.check.PeerCloseOk(f.Channel)
			pc.reply(channelCloseOkFrame(f.Channel))
			if len(pc.chans) > 0 {
				pc.c.shrink()
			}
			return false
		}
		ch.closeSent = true
		ch.partial = ch.partial[:0]
		pc.batch = amqp.AppendFrame(pc.batch, amqp.Frame{Type: f.Type, Channel: ch.up, Payload: f.Payload})
	case amqp.StepChannelCloseOk:
		pc.channelCloseOk(f)
	case amqp.StepForward:
		pc.forward(f, ck)
	}
	return false
}

func isCloseOrCloseOk(f amqp.Frame) bool {
	if f.Type != amqp.FrameMethod || f.Channel != 0 || len(f.Payload) < 4 ||
		binary.BigEndian.Uint16(f.Payload) != amqp.ClassConnection {
		return false
	}
	id := binary.BigEndian.Uint16(f.Payload[2:])
	return id == amqp.MethodClose || id == amqp.MethodCloseOk
}

// connectionMethod: the client's Close ends the session (answered once its
// channels are let go), an Update-Secret goes to the broker.
func (pc *poolClient) connectionMethod(f amqp.Frame, ck amqp.Checked) bool {
	switch ck.Method {
	case amqp.MethodClose:
		pc.ended.CompareAndSwap(nil, closeClean)
		b, _ := amqp.AppendMethodFrame(nil, 0, &amqp.CloseOk{})
		pc.reply(b)
		return true
	case amqp.MethodCloseOk:
		return true // the client had sent Close and closed first
	case amqp.MethodConnectionUpdateSecret:
		pc.c.mu.Lock()
		pc.c.secretWait = append(pc.c.secretWait, pc)
		pc.c.mu.Unlock()
		pc.batch = amqp.AppendFrame(pc.batch, f)
	}
	return false
}

// openChannel maps a client channel onto a free broker channel.
func (pc *poolClient) openChannel(f amqp.Frame) {
	ch := &pooledChannel{pc: pc, id: f.Channel, reuse: reuseState{reusable: pc.reuseOn}}
	if pc.reuseOn && pc.reuseOpen(ch) {
		return
	}
	up, err := pc.c.allocChannel(ch, len(pc.chans) > 0)
	if err != nil {
		cl := &amqp.Close{ReplyCode: amqp.ReplyConnectionForced, ReplyText: "CONNECTION_FORCED - " + err.Error() + "; reconnect",
			FailingClass: amqp.ClassChannel, FailingMethod: amqp.MethodChannelOpen}
		if errors.Is(err, errNoChannel) {
			pc.c.pool.refuse("channels")
			cl.ReplyCode, cl.ReplyText = amqp.ReplyNotAllowed, "NOT_ALLOWED - "+pc.noChannelText(err)
		}
		pc.closeClientLocked(cl)
		return
	}
	ch.up = up
	pc.chans[f.Channel] = ch
	pc.batch = amqp.AppendFrame(pc.batch, amqp.Frame{Type: f.Type, Channel: up, Payload: f.Payload})
}

func (pc *poolClient) noChannelText(error) string {
	return "the pooled broker connection " + pc.c.name + " has all " + strconv.Itoa(pc.c.capacity()) +
		" channels in use (max_channels_per_connection)"
}

// channelCloseOk answers the broker's channel.close. The broker channel is
// free once the close-ok is on its way, not before: a channel.open from
// another client must not overtake it.
func (pc *poolClient) channelCloseOk(f amqp.Frame) {
	ch := pc.chans[f.Channel]
	delete(pc.chans, f.Channel)
	if ch == nil {
		return
	}
	ch.brokerClosed = false
	pc.batch = amqp.AppendFrame(pc.batch, amqp.Frame{Type: f.Type, Channel: ch.up, Payload: f.Payload})
	if err := pc.flushLocked(); err != nil {
		return
	}
	pc.c.freeChannel(ch.up, len(pc.chans) > 0)
}

// forward relays a method or content frame on the broker's channel id. A
// message is held until it is whole, so that a client that goes away
// halfway leaves nothing on the shared connection.
func (pc *poolClient) forward(f amqp.Frame, ck amqp.Checked) {
	ch := pc.chans[f.Channel]
	if pc.reuseOn && pc.noteForward(ch, f, ck) {
		return
	}
	if f.Type == amqp.FrameMethod && namesQueue(ck.Class, ck.Method) {
		if pc.lockedOut(ch, f.Payload, ck) {
			return
		}
	}
	frame := amqp.Frame{Type: f.Type, Channel: ch.up, Payload: f.Payload}
	if f.Type == amqp.FrameMethod && !amqp.HasContent(ck.Class, ck.Method) {
		pc.batch = amqp.AppendFrame(pc.batch, frame)
		return
	}
	ch.partial = amqp.AppendFrame(ch.partial, frame)
	if ck.EndsContent {
		ch.reuse.notePublished()
		pc.batch = append(pc.batch, ch.partial...)
		if cap(ch.partial) > poolReadBuffer {
			ch.partial = nil
		} else {
			ch.partial = ch.partial[:0]
		}
	}
}

// namesQueue reports whether a client method names a queue as its second
// argument, after a reserved short (spec 1.7.2, 1.8.3).
func namesQueue(class, method uint16) bool {
	switch class {
	case amqp.ClassQueue:
		return method == amqp.MethodQueueDeclare || method == 20 || method == 30 || method == methodQueueDelete || method == 50
	case amqp.ClassBasic:
		return method == amqp.MethodBasicConsume || method == 70
	}
	return false
}

// lockedOut refuses, as the broker would refuse another connection (405
// RESOURCE_LOCKED, a channel exception), a method naming a queue another
// client of the shared connection declared exclusive; it notes the
// client's own exclusive declares and deletes.
func (pc *poolClient) lockedOut(ch *pooledChannel, payload []byte, ck amqp.Checked) bool {
	name, _ := shortstrAt(payload, 6)
	if owner := pc.c.exclusiveOwner(string(name)); owner != nil && owner != pc {
		pc.closeChannelLocked(ch, 405, "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '"+string(name)+
			"' in vhost '"+pc.s.open.VirtualHost+"'. It was declared exclusive by another client of the proxy's pooled connection", ck)
		return true
	}
	switch {
	case ck.Class == amqp.ClassQueue && ck.Method == amqp.MethodQueueDeclare:
		pc.noteDeclare(ch, payload)
	case ck.Class == amqp.ClassQueue && ck.Method == methodQueueDelete && len(name) > 0:
		if _, ok := pc.exclusive[string(name)]; ok {
			delete(pc.exclusive, string(name))
			pc.c.releaseQueue(string(name), pc)
		}
	}
	return false
}

// closeChannelLocked closes one of the client's channels for the proxy:
// the client gets channel.close with code and text, and the broker channel
// it was mapped to is closed and reused after the broker's close-ok.
func (pc *poolClient) closeChannelLocked(ch *pooledChannel, code uint16, text string, ck amqp.Checked) {
	pc.c.pool.refuse("resource_locked")
	delete(pc.chans, ch.id)
	pc.check.PeerClose(ch.id)
	ch.abandoned, ch.closeSent, ch.shrink = true, true, len(pc.chans) > 0
	pc.batch = append(pc.batch, channelCloseFrame(ch.up, amqp.ReplySuccess, "closed by the proxy")...)
	pc.reply(methodFrame(ch.id, amqp.ClassChannel, amqp.MethodChannelClose, amqp.Table{
		{Name: "reply-code", Value: code}, {Name: "reply-text", Value: text},
		{Name: "class-id", Value: ck.Class}, {Name: "method-id", Value: ck.Method}}))
}

// noteDeclare remembers an exclusive queue.declare: its queue is deleted
// when the client leaves, as the broker would delete it with the client's
// own connection (spec 1.7.2.1, "exclusive").
func (pc *poolClient) noteDeclare(ch *pooledChannel, payload []byte) {
	_, _, args, err := amqp.DecodeArgs(payload)
	if err != nil || len(args) < 7 {
		return
	}
	name, _ := args[1].Value.(string)
	exclusive, _ := args[4].Value.(bool)
	noWait, _ := args[6].Value.(bool)
	switch {
	case !noWait:
		ch.declares = append(ch.declares, exclusive)
	case exclusive && name != "":
		pc.claim(name)
	}
}

// claim records a queue the client declared exclusive.
func (pc *poolClient) claim(name string) {
	pc.exclusive[name] = struct{}{}
	pc.c.claimQueue(name, pc)
}

// flush writes the batch to the broker.
func (pc *poolClient) flush() error {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.flushLocked()
}

func (pc *poolClient) flushLocked() error {
	if len(pc.batch) == 0 {
		return nil
	}
	err := pc.c.write(pc.batch)
	if cap(pc.batch) > 4*poolReadBuffer {
		pc.batch = nil
	} else {
		pc.batch = pc.batch[:0]
	}
	return err
}

// fromBroker passes a broker frame to the client on its own channel id,
// and follows the channel's close handshake and exclusive declares.
func (ch *pooledChannel) fromBroker(f amqp.Frame) {
	pc := ch.pc
	pc.mu.Lock()
	defer pc.mu.Unlock()
	class, method := methodOf(f)
	if ch.abandoned {
		ch.abandonedFrame(class, method)
		return
	}
	switch {
	case class == amqp.ClassChannel && method == amqp.MethodChannelClose:
		ch.brokerClosed = true
		ch.partial = ch.partial[:0]
		pc.check.PeerClose(ch.id)
	case class == amqp.ClassChannel && method == amqp.MethodChannelCloseOk:
		pc.check.PeerCloseOk(ch.id)
		delete(pc.chans, ch.id)
		pc.c.freeChannel(ch.up, len(pc.chans) > 0)
	case class == amqp.ClassBasic && (method == amqp.MethodBasicAck || method == amqp.MethodBasicNack) && pc.reuseOn:
		var scratch [16]byte
		if !ch.reuse.confirmFrom(&f, scratch[:0]) || !ch.reuse.clientConfirm {
			return // an earlier client's, or a client that did not ask for confirms
		}
	case class == amqp.ClassQueue && method == amqp.MethodQueueDeclareOk && len(ch.declares) > 0:
		exclusive := ch.declares[0]
		ch.declares = ch.declares[1:]
		if name, ok := shortstrAt(f.Payload, 4); ok && exclusive {
			pc.claim(string(name))
		}
	}
	pc.deliver(ch.id, f)
}

// abandonedFrame finishes the close of a channel whose client left: the
// broker's close-ok frees it; a close the broker sent as the proxy's
// crossed it is answered, and the close-ok still awaited.
func (ch *pooledChannel) abandonedFrame(class, method uint16) {
	c := ch.pc.c
	switch {
	case class == amqp.ClassChannel && method == amqp.MethodChannelCloseOk:
		c.freeChannel(ch.up, ch.shrink)
	case class == amqp.ClassChannel && method == amqp.MethodChannelClose:
		b := channelCloseOkFrame(ch.up)
		if !ch.closeSent {
			c.control(b, func() { c.freeChannel(ch.up, ch.shrink) })
			return
		}
		c.control(b, nil)
	}
}

func methodOf(f amqp.Frame) (class, method uint16) {
	if f.Type != amqp.FrameMethod || len(f.Payload) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(f.Payload), binary.BigEndian.Uint16(f.Payload[2:])
}

// deliver queues a broker frame for the client on channel id, split into
// body frames the client's frame_max allows.
func (pc *poolClient) deliver(id uint16, f amqp.Frame) {
	f.Channel = id
	max := int(pc.frameMax) - amqp.FrameOverhead
	if f.Type != amqp.FrameBody || len(f.Payload) <= max || max <= 0 {
		pc.sendFrame(f)
		return
	}
	for p := f.Payload; len(p) > 0; {
		n := min(len(p), max)
		pc.sendFrame(amqp.Frame{Type: f.Type, Channel: id, Payload: p[:n]})
		p = p[n:]
	}
}

// sendFrame queues a broker frame; it runs on the connection's reader
// goroutine only, which is what feeds the watch's broker-side decoder.
func (pc *poolClient) sendFrame(f amqp.Frame) {
	pc.out.Lock()
	if !pc.outDone {
		n := len(pc.outBuf)
		pc.outBuf = amqp.AppendFrame(pc.outBuf, f)
		if pc.watch != nil {
			pc.watch.fromBroker(pc.outBuf[n:])
		}
	}
	over := len(pc.outBuf) > pc.backlogMax
	pc.out.Unlock()
	if over {
		pc.cutSlow()
		return
	}
	pc.kickWriter()
}

// reply is an answer of the proxy's own to a frame the client just sent
// (channel.open-ok of a kept channel, confirm.select-ok, close-ok). It is
// written by the client's goroutine itself once pc.mu is released
// (flushReplies), not handed to the writer goroutine: a reply is what the
// client waits for, and the hand-off costs a wake-up. Only the client's
// goroutine calls it.
func (pc *poolClient) reply(b []byte) { pc.replies = append(pc.replies, b...) }

// flushReplies writes the replies, unless broker frames are queued before
// them (then they are queued after those). It blocks only the client's own
// goroutine on its own socket. pc.mu must not be held.
func (pc *poolClient) flushReplies() {
	if len(pc.replies) == 0 {
		return
	}
	b := pc.replies
	pc.replies = pc.replies[:0]
	pc.wmu.Lock()
	pc.out.Lock()
	if pc.outDone || len(pc.outBuf) > 0 {
		if !pc.outDone {
			pc.outBuf = append(pc.outBuf, b...)
		}
		pc.out.Unlock()
		pc.wmu.Unlock()
		pc.kickWriter()
		return
	}
	pc.out.Unlock()
	n, err := pc.s.out.Write(b)
	pc.wmu.Unlock()
	pc.bytesOut.Add(int64(n))
	if err != nil {
		pc.cutSlow()
	}
}

// send queues bytes for the client.
func (pc *poolClient) send(b []byte) {
	pc.out.Lock()
	if !pc.outDone {
		pc.outBuf = append(pc.outBuf, b...)
	}
	pc.out.Unlock()
	pc.kickWriter()
}

func (pc *poolClient) kickWriter() {
	select {
	case pc.outKick <- struct{}{}:
	default:
	}
}

// cutSlow disconnects a client that has not read what the broker sent it
// for max_client_backlog bytes: the connection's reader never waits for
// one client. Its channels close, and the broker requeues what it had not
// acknowledged.
func (pc *poolClient) cutSlow() {
	pc.out.Lock()
	first := !pc.outDone
	pc.outDone = true
	pc.outBuf = nil
	pc.out.Unlock()
	if first {
		pc.refusal.CompareAndSwap(nil, "slow_client")
		pc.c.pool.refuse("slow_client")
		pc.ended.CompareAndSwap(nil, closeSevered)
		_ = pc.conn.Close()
	}
}

// writeLoop writes what is queued for the client, and a heartbeat when the
// client has had nothing for half its heartbeat interval.
func (pc *poolClient) writeLoop() {
	defer close(pc.wrote)
	var beat <-chan time.Time
	if hb := time.Duration(pc.s.tuneOk.Heartbeat) * time.Second; hb > 0 {
		t := time.NewTicker(hb / 2)
		defer t.Stop()
		beat = t.C
	}
	var spare []byte
	heartbeat := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeartbeat})
	wrote := false
	for {
		select {
		case <-pc.outKick:
		case <-beat:
			if !wrote {
				pc.send(heartbeat)
				continue
			}
			wrote = false
			continue
		}
		pc.wmu.Lock()
		pc.out.Lock()
		b, done := pc.outBuf, pc.outDone
		pc.outBuf = spare[:0]
		pc.out.Unlock()
		if len(b) > 0 {
			n, err := pc.s.out.Write(b)
			pc.bytesOut.Add(int64(n))
			wrote = true
			if err != nil {
				pc.wmu.Unlock()
				pc.cutSlow()
				return
			}
		}
		pc.wmu.Unlock()
		if cap(b) <= 4*poolReadBuffer {
			spare = b
		} else {
			spare = nil
		}
		if done {
			return
		}
	}
}

// finishWriter lets the writer send what is queued (a Close, say), for at
// most a second, and closes the client's socket.
func (pc *poolClient) finishWriter() {
	pc.out.Lock()
	pc.outDone = true
	pc.out.Unlock()
	pc.kickWriter()
	_ = pc.conn.SetWriteDeadline(time.Now().Add(time.Second))
	<-pc.wrote
	_ = pc.conn.Close()
}

// refuse closes the client for a frame that would have broken the shared
// connection, counting it by reason.
func (pc *poolClient) refuse(v *amqp.Violation) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.refuseLocked(v)
}

func (pc *poolClient) refuseLocked(v *amqp.Violation) {
	reason := refusalReason(v.Code)
	pc.refusal.CompareAndSwap(nil, reason)
	pc.c.pool.refuse(reason)
	pc.ended.CompareAndSwap(nil, closeRefused)
	pc.closeClientLocked(&amqp.Close{ReplyCode: v.Code, ReplyText: v.Text, FailingClass: v.Class, FailingMethod: v.Method})
}

// closeClientLocked sends the client a Connection.Close and waits for its
// Close-Ok (for at most a second), dropping its other frames (spec
// 1.4.2.5). Messages it had not finished are dropped with them.
func (pc *poolClient) closeClientLocked(cl *amqp.Close) {
	if pc.closing {
		return
	}
	pc.closing = true
	for _, ch := range pc.chans {
		ch.partial = nil
	}
	if len(cl.ReplyText) > 255 {
		cl.ReplyText = cl.ReplyText[:252] + "..."
	}
	b, _ := amqp.AppendMethodFrame(nil, 0, cl)
	pc.send(b)
	_ = pc.conn.SetReadDeadline(time.Now().Add(time.Second))
}

// waitCloseOk reads the client's frames until its Close-Ok (or the
// deadline closeClientLocked set) after a refusal the reader itself hit.
func (pc *poolClient) waitCloseOk() {
	for {
		f, err := pc.s.frames.Next(max(pc.frameMax, amqp.FrameMinSize))
		if err != nil || isCloseOrCloseOk(f) {
			return
		}
	}
}

// brokerGone tells the client its broker connection ended: the broker's
// own Close, or 320.
func (pc *poolClient) brokerGone(why *amqp.Close) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.ended.CompareAndSwap(nil, closeBrokerDropped)
	if why == nil {
		why = &amqp.Close{ReplyCode: amqp.ReplyConnectionForced, ReplyText: "CONNECTION_FORCED - the pooled broker connection closed"}
	}
	cl := *why
	pc.closeClientLocked(&cl)
}

// sever ends the session for an operator: gracefully with Close 320, or
// at once.
func (pc *poolClient) sever(how int32, text string) {
	if how == severNow {
		pc.ended.CompareAndSwap(nil, closeSevered)
		_ = pc.conn.Close()
		return
	}
	pc.mu.Lock()
	defer pc.mu.Unlock()
	pc.ended.CompareAndSwap(nil, closeSevered)
	pc.closeClientLocked(&amqp.Close{ReplyCode: amqp.ReplyConnectionForced, ReplyText: text})
}

// leave lets go of the client's broker channels: each open one is closed
// (the broker requeues what the client had not acknowledged), each the
// broker closed gets its close-ok, and its exclusive queues are deleted.
// A broker channel is reused only after its close handshake.
func (pc *poolClient) leave() {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	_ = pc.flushLocked()
	c := pc.c
	had := len(pc.chans) > 0
	for id, ch := range pc.chans {
		if pc.parkOrClose(ch) {
			delete(pc.chans, id)
			c.shrink()
			continue
		}
		ch.abandoned, ch.shrink = true, true
		ch.partial = nil
		switch {
		case ch.brokerClosed:
			b := channelCloseOkFrame(ch.up)
			up := ch.up
			c.control(b, func() { c.freeChannel(up, true) })
		case ch.closeSent:
			// the broker's close-ok frees it
		default:
			ch.closeSent = true
			c.control(channelCloseFrame(ch.up, amqp.ReplySuccess, "client left the proxy"), nil)
		}
	}
	for q := range pc.exclusive {
		deleteQueue(c, q, pc)
	}
	c.detach(pc, had)
}
