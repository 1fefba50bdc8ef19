package l4amqp

import (
	"encoding/binary"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// Channel reuse (pool option reuse_channels): a broker channel a client
// used only to publish with confirms, all of them confirmed, is kept open
// when the client closes it or leaves, and given to the next client that
// opens a channel on the connection. That client's channel.open and
// confirm.select are then answered by the proxy (the broker channel is
// open, and in confirm mode), and the broker's confirms reach it with
// delivery tags counted from its own first publish. A channel used for
// anything else (consuming, getting, declaring, transactions, qos, flow,
// publishing without confirms) is closed on the broker as without reuse:
// no state of one client can reach the next.

// maxParked bounds the channels a connection keeps for reuse.
const maxParked = 64

// reuseState is what reuse needs to know of a channel, beside its phase.
type reuseState struct {
	reusable      bool   // only publishes with confirms so far
	clientConfirm bool   // the client selected confirms (its view)
	brokerConfirm bool   // the broker channel is in confirm mode
	publishing    bool   // a publish's content is on its way
	published     uint64 // publishes the broker channel has taken in confirm mode
	confirmed     uint64 // of those, confirmed (acks and nacks)
	offset        uint64 // broker delivery tag of the client's publish 0
}

// settled reports whether every publish on the channel is confirmed.
func (r *reuseState) settled() bool { return r.confirmed >= r.published }

// parkedChannel owns a broker channel kept for reuse.
type parkedChannel struct {
	c     *upConn
	up    uint16
	state reuseState
}

// fromBroker: a parked channel expects nothing; a channel.close from the
// broker is answered and the channel forgotten.
func (p *parkedChannel) fromBroker(f amqp.Frame) {
	if class, method := methodOf(f); class == amqp.ClassChannel && method == amqp.MethodChannelClose {
		c := p.c
		if c.unpark(p) {
			c.control(channelCloseOkFrame(p.up), func() { c.freeChannel(p.up, false) })
		}
	}
}

// park keeps a settled publish-only channel for the next client; it
// reports false when the connection keeps enough already.
func (c *upConn) park(up uint16, st reuseState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != connOpen || len(c.parked) >= maxParked {
		return false
	}
	p := &parkedChannel{c: c, up: up, state: st}
	c.owners[up].Store(&ownerBox{p})
	c.parked = append(c.parked, p)
	return true
}

// unpark takes p off the parked list; false if it was taken already.
func (c *upConn) unpark(p *parkedChannel) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.parked {
		if x == p {
			c.parked = append(c.parked[:i], c.parked[i+1:]...)
			return true
		}
	}
	return false
}

// reuse hands owner the most recently parked channel, if any, taking
// capacity as allocChannel does.
func (c *upConn) reuse(owner brokerChannel, grow bool) (uint16, reuseState, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.parked)
	if c.state != connOpen || n == 0 || (grow && c.used >= c.maxUsed) {
		return 0, reuseState{}, false
	}
	p := c.parked[n-1]
	c.parked = c.parked[:n-1]
	c.owners[p.up].Store(&ownerBox{owner})
	if grow {
		c.used++
	}
	c.idleSince = time.Time{}
	c.reused++
	return p.up, p.state, true
}

// reuseOpen opens a client channel on a parked broker channel: the
// client's channel.open is answered by the proxy.
func (pc *poolClient) reuseOpen(ch *pooledChannel) bool {
	up, st, ok := pc.c.reuse(ch, len(pc.chans) > 0)
	if !ok {
		return false
	}
	ch.up = up
	ch.reuse = st
	ch.reuse.clientConfirm = false
	ch.reuse.offset = st.published
	pc.chans[ch.id] = ch
	pc.reply(methodFrame(ch.id, amqp.ClassChannel, amqp.MethodChannelOpenOk, amqp.Table{{Name: "reserved-1", Value: ""}}))
	return true
}

// noteForward follows a client method on a channel for reuse. It reports
// true when the proxy answered the method itself (confirm.select on a
// channel already in confirm mode).
func (pc *poolClient) noteForward(ch *pooledChannel, f amqp.Frame, ck amqp.Checked) bool {
	r := &ch.reuse
	if f.Type != amqp.FrameMethod {
		return false
	}
	switch {
	case ck.Class == amqp.ClassConfirm && ck.Method == amqp.MethodConfirmSelect:
		r.clientConfirm = true
		if !r.brokerConfirm {
			r.brokerConfirm = true
			return false
		}
		if len(f.Payload) > 4 && f.Payload[4]&1 == 0 { // not no-wait
			pc.reply(methodFrame(ch.id, amqp.ClassConfirm, amqp.MethodConfirmSelect+1, amqp.Table{}))
		}
		return true
	case ck.Class == amqp.ClassBasic && ck.Method == amqp.MethodBasicPublish && r.clientConfirm:
		r.publishing = true
	default:
		r.reusable = false
	}
	return false
}

// notePublished counts a whole message written to the broker.
func (r *reuseState) notePublished() {
	if r.publishing {
		r.publishing = false
		r.published++
	}
}

// confirmFrom adjusts a broker confirm (basic.ack or basic.nack) on a
// reused channel to the client's delivery tags, and counts it. It returns
// false for a confirm of an earlier client's publish, which is dropped.
func (r *reuseState) confirmFrom(f *amqp.Frame, buf []byte) bool {
	if len(f.Payload) < 13 {
		return true
	}
	tag := binary.BigEndian.Uint64(f.Payload[4:12])
	if f.Payload[12]&1 != 0 { // multiple
		r.confirmed = max(r.confirmed, tag)
	} else {
		r.confirmed++
	}
	if r.offset == 0 {
		return true
	}
	if tag <= r.offset {
		return false
	}
	p := append(buf[:0], f.Payload...)
	binary.BigEndian.PutUint64(p[4:12], tag-r.offset)
	f.Payload = p
	return true
}

// parkOrClose lets go of a client channel the client closed or left: a
// settled publish-only channel is parked, any other is closed on the
// broker. It reports whether it parked.
func (pc *poolClient) parkOrClose(ch *pooledChannel) bool {
	r := &ch.reuse
	if !pc.reuseOn || !r.reusable || !r.settled() || r.publishing || ch.brokerClosed || ch.closeSent || len(ch.partial) > 0 {
		return false
	}
	st := *r
	st.publishing = false
	return pc.c.park(ch.up, st)
}

// shrink gives back the capacity of a client channel that was parked.
func (c *upConn) shrink() {
	c.mu.Lock()
	c.used--
	c.markIdle()
	c.mu.Unlock()
}
