package l4amqp

import (
	"testing"

	"github.com/caddyprelude/prelude/amqp"
)

// A consumer the broker names (an empty tag in Basic.Consume, the name in
// Consume-Ok) still counts its deliveries to its queue.
func TestObjectsBrokerNamedConsumer(t *testing.T) {
	objectLimit.Store(max(objectLimit.Load(), 10))
	tr := newObjectTracker()
	feed := func(dir amqp.Dir, frames ...[]byte) {
		d := amqp.Decoder{Dir: dir, Emit: tr.frame}
		for _, f := range frames {
			d.Feed(f)
		}
	}
	method := func(class, id uint16, args ...byte) []byte {
		b, _ := amqp.AppendMethodFrame(nil, 1, &amqp.OtherMethod{Class: class, Method: id, Args: args})
		return b
	}
	header := amqp.AppendFrame(nil, amqp.Frame{Type: amqp.FrameHeader, Channel: 1,
		Payload: []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0}})
	before := queueTallies.snapshot()["unit-q"]
	// consume: reserved-1, queue "unit-q", consumer-tag "", bits, empty table
	feed(amqp.FromClient, method(amqp.ClassBasic, amqp.MethodBasicConsume, 0, 0, 6, 'u', 'n', 'i', 't', '-', 'q', 0, 0, 0, 0, 0, 0))
	feed(amqp.FromBroker,
		method(amqp.ClassBasic, amqp.MethodBasicConsumeOk, 3, 't', 'a', 'g'),
		// deliver: consumer-tag "tag", delivery-tag, redelivered, exchange "", routing-key ""
		method(amqp.ClassBasic, amqp.MethodBasicDeliver, 3, 't', 'a', 'g', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0),
		header)
	after := queueTallies.snapshot()["unit-q"]
	if after.Messages-before.Messages != 1 || after.Bytes-before.Bytes != 7 {
		t.Fatalf("unit-q: before %+v after %+v", before, after)
	}
}
