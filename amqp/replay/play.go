package replay

import (
	"encoding/binary"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// play sends the captured client frames after the handshake, in order.
func (p *player) play() {
	var start, first time.Time
	handshake := true
	for i := range p.s.Frames {
		f := &p.s.Frames[i]
		if f.Dir == amqp.FromBroker {
			observe(p.captured, f.Dir, f.Channel, f.Type, f.Payload)
			p.capturedSeen.add(f.Channel, f.Type, f.Payload)
			continue
		}
		if handshake {
			handshake = !(f.Channel == 0 && f.Type == amqp.FrameMethod && methodID(f.Payload) == amqp.MethodOpen)
			continue
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		if start.IsZero() {
			start, first = time.Now(), f.Time
		}
		p.pace(start, first, f.Time)
		p.drain()
		if p.gone {
			p.r.differ("connection: the broker closed it before the capture's client did (%d client frames not sent)", p.clientFramesFrom(i))
			return
		}
		if p.closed[f.Channel] && !isMethod(f, amqp.ClassChannel, amqp.MethodChannelOpen) {
			p.r.Skipped++
			continue
		}
		switch f.Type {
		case amqp.FrameMethod:
			if !p.method(i, f) {
				return
			}
		case amqp.FrameBody:
			body := f.Payload
			if uint32(len(body)) < f.Size {
				p.r.Notes = append(p.r.Notes, "a body the capture cut was replayed padded with zeros")
				body = append(append([]byte(nil), body...), make([]byte, f.Size-uint32(len(body)))...)
			}
			p.write(amqp.Frame{Type: f.Type, Channel: f.Channel, Payload: body})
		default:
			p.write(amqp.Frame{Type: f.Type, Channel: f.Channel, Payload: f.Payload})
		}
	}
}

func (p *player) clientFramesFrom(i int) int {
	n := 0
	for _, f := range p.s.Frames[i:] {
		if f.Dir == amqp.FromClient {
			n++
		}
	}
	return n
}

// pace sleeps until the frame's captured offset, divided by the speed.
func (p *player) pace(start, first, at time.Time) {
	if p.o.Speed <= 0 || at.Before(first) {
		return
	}
	due := start.Add(time.Duration(float64(at.Sub(first)) / p.o.Speed))
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
}

// method sends one client method, mapped, and waits for its reply when it
// is synchronous. It reports false when the session is over.
func (p *player) method(i int, f *Frame) bool {
	class, method, args, err := amqp.DecodeArgs(f.Payload)
	if err != nil || args == nil {
		p.write(amqp.Frame{Type: amqp.FrameMethod, Channel: f.Channel, Payload: f.Payload})
		return !p.gone
	}
	name := amqp.FullMethodName(class, method)
	if f.Channel != 0 {
		p.catchUp(f.Channel)
	}
	switch {
	case class == amqp.ClassConnection && method == amqp.MethodClose:
		p.catchUpAll()
		p.write(amqp.Frame{Type: amqp.FrameMethod, Payload: f.Payload})
		p.waitFor(func() bool { return p.gone })
		return false
	case class == amqp.ClassChannel && method == amqp.MethodChannelOpen:
		delete(p.closed, f.Channel)
		delete(p.replayedTags, f.Channel)
		delete(p.replayedReplyTo, f.Channel)
		delete(p.replayedSeen, f.Channel)
		delete(p.capturedSeen, f.Channel)
		delete(p.diverged, f.Channel)
	case class == amqp.ClassBasic && (method == amqp.MethodBasicAck || method == amqp.MethodBasicNack || method == amqp.MethodBasicReject):
		if !p.mapDeliveryTag(f.Channel, args) {
			p.r.Skipped++
			return true
		}
	}
	if class == amqp.ClassBasic && method == amqp.MethodBasicPublish {
		p.mapReplyTo(f.Channel, args)
	}
	p.mapNames(args)
	payload, err := amqp.EncodeArgs(class, method, args)
	if err != nil {
		payload = f.Payload
	}
	if !p.write(amqp.Frame{Type: amqp.FrameMethod, Channel: f.Channel, Payload: payload}) {
		return false
	}
	if !synchronous(class, method, args) {
		return true
	}
	p.waitFor(func() bool { return len(p.replies[f.Channel]) > 0 || p.gone })
	want, hasWant := p.capturedReply(i, f.Channel)
	var got *amqp.Frame
	if q := p.replies[f.Channel]; len(q) > 0 {
		got, p.replies[f.Channel] = &q[0], q[1:]
	}
	switch {
	case got == nil && hasWant:
		p.r.differ("channel %d %s: captured %s, got no reply", f.Channel, name, describe(want.Payload))
	case got != nil && !hasWant:
		p.r.differ("channel %d %s: no reply captured, got %s", f.Channel, name, describe(got.Payload))
	case got != nil && describe(got.Payload) != describe(want.Payload):
		p.r.differ("channel %d %s: captured %s, got %s", f.Channel, name, describe(want.Payload), describe(got.Payload))
	case got != nil:
		p.learnNames(want.Payload, got.Payload)
	}
	return !p.gone
}

// capturedReply is the broker's captured reply to the client method at i.
func (p *player) capturedReply(i int, ch uint16) (Frame, bool) {
	for _, f := range p.s.Frames[i+1:] {
		if f.Dir == amqp.FromBroker && f.Channel == ch && f.Type == amqp.FrameMethod && !asynchronous(f.Payload) {
			return f, true
		}
	}
	return Frame{}, false
}

// describe names a reply: its method, and a Close's reply code and text.
func describe(payload []byte) string {
	class, method := classMethod(payload)
	name := amqp.FullMethodName(class, method)
	if (class == amqp.ClassChannel && method == amqp.MethodChannelClose) || (class == amqp.ClassConnection && method == amqp.MethodClose) {
		if _, _, args, err := amqp.DecodeArgs(payload); err == nil {
			return name + " " + itoa(uint64(args[0].Value.(uint16))) + " " + args.String("reply-text")
		}
	}
	return name
}

// learnNames maps a server-named queue or consumer tag the capture holds
// to the one the target gave.
func (p *player) learnNames(want, got []byte) {
	_, _, wa, err1 := amqp.DecodeArgs(want)
	_, _, ga, err2 := amqp.DecodeArgs(got)
	if err1 != nil || err2 != nil {
		return
	}
	if w, g := wa.String("queue"), ga.String("queue"); w != "" && w != g {
		p.queues[w] = g
	}
	if w, g := wa.String("consumer-tag"), ga.String("consumer-tag"); w != "" && w != g {
		p.consumers[w] = g
	}
}

// mapNames rewrites captured queue names and consumer tags (and the
// routing key of a publish to the default exchange, which is a queue name).
func (p *player) mapNames(args amqp.Table) {
	for i := range args {
		switch args[i].Name {
		case "queue":
			if s, ok := args[i].Value.(string); ok && p.queues[s] != "" {
				args[i].Value = p.queues[s]
			}
		case "routing-key":
			if s, ok := args[i].Value.(string); ok && p.queues[s] != "" && args.String("exchange") == "" {
				args[i].Value = p.queues[s]
			}
		case "consumer-tag":
			if s, ok := args[i].Value.(string); ok && p.consumers[s] != "" {
				args[i].Value = p.consumers[s]
			}
		}
	}
}

// mapDeliveryTag turns a captured delivery tag into the replayed one of
// the same delivery (the n-th on the channel), waiting for it to arrive.
func (p *player) mapDeliveryTag(ch uint16, args amqp.Table) bool {
	tag, _ := args[0].Value.(uint64)
	if tag == 0 {
		return true // "everything so far" with multiple
	}
	n, ok := p.capturedTags[ch][tag]
	if !ok {
		p.r.differ("channel %d: the client settles delivery tag %d, which the capture never delivered", ch, tag)
		return false
	}
	p.waitFor(func() bool { return len(p.replayedTags[ch]) > n || p.gone || p.closed[ch] })
	if len(p.replayedTags[ch]) <= n {
		p.r.differ("channel %d: delivery %d (captured tag %d) did not arrive in the replay", ch, n+1, tag)
		return false
	}
	args[0].Value = p.replayedTags[ch][n]
	return true
}

// mapReplyTo turns a reply published to a captured direct reply-to name
// into one to the name the broker gave the same request in the replay,
// waiting for that request's delivery.
func (p *player) mapReplyTo(ch uint16, args amqp.Table) {
	rk := args.String("routing-key")
	ref, ok := p.capturedReplyTo[rk]
	if !ok || args.String("exchange") != "" {
		return
	}
	p.waitFor(func() bool { return len(p.replayedReplyTo[ref.ch]) > ref.n || p.gone })
	if len(p.replayedReplyTo[ref.ch]) <= ref.n || p.replayedReplyTo[ref.ch][ref.n] == "" {
		p.r.differ("channel %d: the reply to %s has no request delivered in the replay to answer", ch, rk)
		return
	}
	args.Set("routing-key", p.replayedReplyTo[ref.ch][ref.n])
}

// replyTo reads the reply-to property of a content header payload.
func replyTo(payload []byte) string {
	_, _, props, err := amqp.ParseContentHeader(payload)
	if err != nil {
		return ""
	}
	return props.String("reply-to")
}

// seen counts, per channel, what the broker sent on its own that a client
// may be reacting to: deliveries, returns, and the highest publish
// confirmed (a tag, since brokers group confirms differently run to run).
type seen map[uint16]*seenOn

type seenOn struct {
	deliveries, returns int
	confirmed           uint64
}

func (s seen) add(ch uint16, typ byte, payload []byte) {
	if typ != amqp.FrameMethod {
		return
	}
	on := s[ch]
	if on == nil {
		on = &seenOn{}
		s[ch] = on
	}
	c, m := classMethod(payload)
	switch {
	case isDelivery(payload):
		on.deliveries++
	case c == amqp.ClassBasic && m == amqp.MethodBasicReturn:
		on.returns++
	case c == amqp.ClassBasic && (m == amqp.MethodBasicAck || m == amqp.MethodBasicNack):
		if tag, _, ok := amqp.AckArgs(payload); ok && tag > on.confirmed {
			on.confirmed = tag
		}
	}
}

// covers reports whether s has seen on ch all that o has.
func (s seen) covers(o seen, ch uint16) bool {
	want, got := o[ch], s[ch]
	if want == nil {
		return true
	}
	if got == nil {
		got = &seenOn{}
	}
	return got.deliveries >= want.deliveries && got.returns >= want.returns && got.confirmed >= want.confirmed
}

// catchUp waits, before a client frame on ch, until the target has sent on
// ch what the capture's broker had sent before it: the client may have
// been answering it. A channel that does not catch up within Wait is not
// waited for again (the totals will show the difference).
func (p *player) catchUp(ch uint16) {
	if p.diverged[ch] || p.closed[ch] {
		return
	}
	p.waitFor(func() bool { return p.replayedSeen.covers(p.capturedSeen, ch) || p.gone || p.closed[ch] })
	if !p.replayedSeen.covers(p.capturedSeen, ch) {
		p.diverged[ch] = true
	}
}

// catchUpAll catches up every channel, before the client closes.
func (p *player) catchUpAll() {
	for ch := range p.capturedSeen {
		p.catchUp(ch)
	}
}

// drain handles what the target sent so far, without waiting.
func (p *player) drain() {
	for {
		select {
		case ev, ok := <-p.events:
			if !ok {
				p.gone = true
				return
			}
			p.handle(ev)
		default:
			return
		}
	}
}

// waitFor handles the target's frames until cond holds or Wait passes.
func (p *player) waitFor(cond func() bool) {
	timer := time.NewTimer(p.o.Wait)
	defer timer.Stop()
	for !cond() {
		select {
		case ev, ok := <-p.events:
			if !ok {
				p.gone = true
				return
			}
			p.handle(ev)
		case <-timer.C:
			return
		}
	}
}

func (p *player) handle(ev event) {
	if ev.err != nil {
		p.gone = true
		return
	}
	f := ev.f
	observe(p.replayed, amqp.FromBroker, f.Channel, f.Type, f.Payload)
	p.replayedSeen.add(f.Channel, f.Type, f.Payload)
	if f.Type == amqp.FrameHeader && p.headerOf[f.Channel] {
		delete(p.headerOf, f.Channel)
		p.replayedReplyTo[f.Channel] = append(p.replayedReplyTo[f.Channel], replyTo(f.Payload))
	}
	if f.Type != amqp.FrameMethod {
		return
	}
	class, method := classMethod(f.Payload)
	switch {
	case class == amqp.ClassConnection && method == amqp.MethodClose:
		p.send(0, &amqp.CloseOk{})
		p.r.differ("connection: the broker closed it: %s", describe(f.Payload))
		p.gone = true
	case class == amqp.ClassConnection && method == amqp.MethodCloseOk:
		p.gone = true
	case class == amqp.ClassChannel && method == amqp.MethodChannelClose:
		p.send(f.Channel, &amqp.OtherMethod{Class: amqp.ClassChannel, Method: amqp.MethodChannelCloseOk})
		p.closed[f.Channel] = true
		p.replies[f.Channel] = append(p.replies[f.Channel], f)
		if d := describe(f.Payload); !p.capturedCloses[f.Channel][d] {
			p.r.differ("channel %d: the broker closed it: %s", f.Channel, d)
		}
	case isDelivery(f.Payload):
		p.replayedTags[f.Channel] = append(p.replayedTags[f.Channel], deliveryTag(f.Payload))
		p.headerOf[f.Channel] = true
		if method == amqp.MethodBasicGetOk {
			p.replies[f.Channel] = append(p.replies[f.Channel], f)
		}
	case !asynchronous(f.Payload):
		p.replies[f.Channel] = append(p.replies[f.Channel], f)
	}
}

// compareTotals compares what the broker did per session: messages
// delivered, confirmed, nacked to the publisher and returned.
func (p *player) compareTotals() {
	want, got := p.captured.Total.Read(), p.replayed.Total.Read()
	for _, c := range []struct {
		what      string
		want, got uint64
	}{
		{"messages delivered", want.Delivered, got.Delivered},
		{"publishes confirmed", want.Confirmed, got.Confirmed},
		{"publishes nacked by the broker", want.ConfirmNacked, got.ConfirmNacked},
		{"messages returned", want.Returned, got.Returned},
	} {
		if c.want != c.got {
			p.r.differ("%s: captured %d, replayed %d", c.what, c.want, c.got)
		}
	}
}

// observe feeds a whole frame to an Observer.
func observe(o *amqp.Observer, dir amqp.Dir, ch uint16, typ byte, payload []byte) {
	fi := amqp.FrameInfo{Dir: dir, Channel: ch, Type: typ, Size: uint32(len(payload)), Payload: payload}
	if typ == amqp.FrameMethod {
		fi.Class, fi.Method = classMethod(payload)
	} else if typ == amqp.FrameHeader && len(payload) >= 2 {
		fi.Class = binary.BigEndian.Uint16(payload)
	}
	o.Observe(&fi)
}

func classMethod(payload []byte) (uint16, uint16) {
	if len(payload) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])
}

func methodID(payload []byte) uint16 { _, m := classMethod(payload); return m }

func isMethod(f *Frame, class, method uint16) bool {
	c, m := classMethod(f.Payload)
	return f.Type == amqp.FrameMethod && c == class && m == method
}

func isDelivery(payload []byte) bool {
	c, m := classMethod(payload)
	return c == amqp.ClassBasic && (m == amqp.MethodBasicDeliver || m == amqp.MethodBasicGetOk)
}

// deliveryTag reads the delivery tag of a Basic.Deliver or Get-Ok.
func deliveryTag(payload []byte) uint64 {
	_, _, args, err := amqp.DecodeArgs(payload)
	if err != nil {
		return 0
	}
	if v, ok := args.Get("delivery-tag"); ok {
		t, _ := v.(uint64)
		return t
	}
	return 0
}

// asynchronous reports whether a broker method arrives on its own, not as
// the reply to a client method (spec: deliver, return, publisher confirms,
// cancel-notify, flow, blocked).
func asynchronous(payload []byte) bool {
	c, m := classMethod(payload)
	switch c {
	case amqp.ClassBasic:
		return m == amqp.MethodBasicDeliver || m == amqp.MethodBasicReturn || m == amqp.MethodBasicAck ||
			m == amqp.MethodBasicNack || m == 30 // basic.cancel from the broker
	case amqp.ClassChannel:
		return m == 20 // channel.flow
	case amqp.ClassConnection:
		return m == amqp.MethodConnectionBlocked || m == amqp.MethodConnectionUnblocked
	}
	return false
}

// synchronous reports whether a client method waits for a reply: it is
// one the spec answers with an -Ok (or Get-Ok / Get-Empty) and its
// no-wait bit, if any, is clear.
func synchronous(class, method uint16, args amqp.Table) bool {
	if v, ok := args.Get("no-wait"); ok && v == true {
		return false
	}
	if v, ok := args.Get("nowait"); ok && v == true {
		return false
	}
	switch class {
	case amqp.ClassChannel:
		return method == amqp.MethodChannelOpen || method == 20 || method == amqp.MethodChannelClose
	case amqp.ClassExchange:
		return method == 10 || method == 20 || method == 30 || method == 40
	case amqp.ClassQueue:
		return method == 10 || method == 20 || method == 30 || method == 40 || method == 50
	case amqp.ClassBasic:
		return method == 10 || method == 20 || method == 30 || method == 70 || method == 110
	case amqp.ClassConfirm, amqp.ClassTx:
		return method == 10 || method == 20 || method == 30
	}
	return false
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
