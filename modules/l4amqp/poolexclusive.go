package l4amqp

import (
	"github.com/caddyprelude/prelude/amqp"
)

// channelCloseFrame is a channel.close the proxy sends on broker channel up.
func channelCloseFrame(up, code uint16, text string) []byte {
	return methodFrame(up, amqp.ClassChannel, amqp.MethodChannelClose, amqp.Table{
		{Name: "reply-code", Value: code}, {Name: "reply-text", Value: text},
		{Name: "class-id", Value: uint16(0)}, {Name: "method-id", Value: uint16(0)}})
}

func channelCloseOkFrame(up uint16) []byte {
	return methodFrame(up, amqp.ClassChannel, amqp.MethodChannelCloseOk, amqp.Table{})
}

// methodFrame encodes a method of the spec; args are in wire order with the
// Go types amqp.DecodeArgs gives. It panics on arguments that do not fit
// the method: they are the proxy's own constants.
func methodFrame(ch, class, method uint16, args amqp.Table) []byte {
	p, err := amqp.EncodeArgs(class, method, args)
	if err != nil {
		panic(err)
	}
	return amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameMethod, Channel: ch, Payload: p})
}

// queueDeleter deletes one exclusive queue a pooled client declared, after
// the client left, on a broker channel of the proxy's own: channel.open,
// queue.delete, channel.close, each after the broker's answer to the one
// before, so that a refusal (the queue already gone: 404) closes only that
// channel and the id is reused only after its close handshake.
type queueDeleter struct {
	c     *upConn
	up    uint16
	queue string
	owner *poolClient // whose claim on the queue ends with it
}

// Queue deletion uses methods by number: queue.delete is 50.40, its ok 50.41.
const (
	methodQueueDelete   = 40
	methodQueueDeleteOk = 41
)

func deleteQueue(c *upConn, queue string, owner *poolClient) {
	d := &queueDeleter{c: c, queue: queue, owner: owner}
	up, err := c.allocChannel(d, false)
	if err != nil {
		return // the connection is gone, and the queue with it
	}
	c.mu.Lock()
	c.used++ // the proxy's own channel, beyond the pool's count
	c.mu.Unlock()
	d.up = up
	c.control(methodFrame(up, amqp.ClassChannel, amqp.MethodChannelOpen, amqp.Table{{Name: "reserved-1", Value: ""}}), nil)
}

func (d *queueDeleter) fromBroker(f amqp.Frame) {
	class, method := methodOf(f)
	c := d.c
	switch {
	case class == amqp.ClassChannel && method == amqp.MethodChannelOpenOk:
		c.control(methodFrame(d.up, amqp.ClassQueue, methodQueueDelete, amqp.Table{
			{Name: "reserved-1", Value: uint16(0)}, {Name: "queue", Value: d.queue},
			{Name: "if-unused", Value: false}, {Name: "if-empty", Value: false}, {Name: "no-wait", Value: false}}), nil)
	case class == amqp.ClassQueue && method == methodQueueDeleteOk:
		poolExclusiveDeleted.Add(1)
		c.releaseQueue(d.queue, d.owner)
		c.control(channelCloseFrame(d.up, amqp.ReplySuccess, "exclusive queue of a client that left deleted"), nil)
	case class == amqp.ClassChannel && method == amqp.MethodChannelClose:
		c.releaseQueue(d.queue, d.owner) // gone already (404), or not ours to delete
		c.control(channelCloseOkFrame(d.up), func() { c.freeChannel(d.up, true) })
	case class == amqp.ClassChannel && method == amqp.MethodChannelCloseOk:
		c.freeChannel(d.up, true)
	}
}
