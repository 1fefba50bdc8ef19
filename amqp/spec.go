package amqp

import (
	"encoding/binary"
	"fmt"
)

// Class ids of AMQP 0-9-1 (spec 1.2 and the amqp0-9-1.xml machine-readable
// spec; confirm is RabbitMQ's extension, class 85).
const (
	ClassChannel  = 20
	ClassExchange = 40
	ClassQueue    = 50
	ClassBasic    = 60
	ClassConfirm  = 85
	ClassTx       = 90
)

// Method ids the session decoder's consumers look at (spec 1.2-1.8).
const (
	MethodConnectionBlocked      = 60
	MethodConnectionUnblocked    = 61
	MethodConnectionUpdateSecret = 70

	MethodChannelOpen    = 10
	MethodChannelOpenOk  = 11
	MethodChannelClose   = 40
	MethodChannelCloseOk = 41

	MethodQueueDeclare   = 10
	MethodQueueDeclareOk = 11

	MethodBasicConsume   = 20
	MethodBasicConsumeOk = 21
	MethodBasicPublish   = 40
	MethodBasicReturn    = 50
	MethodBasicDeliver   = 60
	MethodBasicGetOk     = 71
	MethodBasicAck       = 80
	MethodBasicReject    = 90
	MethodBasicNack      = 120

	MethodConfirmSelect = 10
)

// Argument types of the method schema (spec 4.2.5 "Field types").
const (
	argOctet     = 'o'
	argShort     = 's'
	argLong      = 'l'
	argLonglong  = 'L'
	argShortstr  = 'S'
	argLongstr   = 'X'
	argBit       = 'b'
	argTable     = 't'
	argTimestamp = 'T'
)

// methodSpec names one method and its arguments in wire order.
type methodSpec struct {
	name string
	args []argSpec
}

type argSpec struct {
	name string
	typ  byte
}

func a(name string, typ byte) argSpec { return argSpec{name, typ} }

var (
	replyArgs    = []argSpec{a("reply-code", argShort), a("reply-text", argShortstr), a("class-id", argShort), a("method-id", argShort)}
	exBindArgs   = []argSpec{a("reserved-1", argShort), a("destination", argShortstr), a("source", argShortstr), a("routing-key", argShortstr), a("no-wait", argBit), a("arguments", argTable)}
	deliveryAck  = []argSpec{a("delivery-tag", argLonglong), a("multiple", argBit)}
	requeueOnly  = []argSpec{a("requeue", argBit)}
	consumerTag  = []argSpec{a("consumer-tag", argShortstr)}
	messageCount = []argSpec{a("message-count", argLong)}
)

// specs is every AMQP 0-9-1 method, by class and method id.
var specs = map[uint16]map[uint16]methodSpec{
	ClassConnection: {
		MethodStart:                  {"connection.start", []argSpec{a("version-major", argOctet), a("version-minor", argOctet), a("server-properties", argTable), a("mechanisms", argLongstr), a("locales", argLongstr)}},
		MethodStartOk:                {"connection.start-ok", []argSpec{a("client-properties", argTable), a("mechanism", argShortstr), a("response", argLongstr), a("locale", argShortstr)}},
		MethodSecure:                 {"connection.secure", []argSpec{a("challenge", argLongstr)}},
		MethodSecureOk:               {"connection.secure-ok", []argSpec{a("response", argLongstr)}},
		MethodTune:                   {"connection.tune", []argSpec{a("channel-max", argShort), a("frame-max", argLong), a("heartbeat", argShort)}},
		MethodTuneOk:                 {"connection.tune-ok", []argSpec{a("channel-max", argShort), a("frame-max", argLong), a("heartbeat", argShort)}},
		MethodOpen:                   {"connection.open", []argSpec{a("virtual-host", argShortstr), a("reserved-1", argShortstr), a("reserved-2", argBit)}},
		MethodOpenOk:                 {"connection.open-ok", []argSpec{a("reserved-1", argShortstr)}},
		MethodClose:                  {"connection.close", replyArgs},
		MethodCloseOk:                {"connection.close-ok", nil},
		MethodConnectionBlocked:      {"connection.blocked", []argSpec{a("reason", argShortstr)}},
		MethodConnectionUnblocked:    {"connection.unblocked", nil},
		MethodConnectionUpdateSecret: {"connection.update-secret", []argSpec{a("new-secret", argLongstr), a("reason", argShortstr)}},
		71:                           {"connection.update-secret-ok", nil},
	},
	ClassChannel: {
		MethodChannelOpen:    {"channel.open", []argSpec{a("reserved-1", argShortstr)}},
		MethodChannelOpenOk:  {"channel.open-ok", []argSpec{a("reserved-1", argLongstr)}},
		20:                   {"channel.flow", []argSpec{a("active", argBit)}},
		21:                   {"channel.flow-ok", []argSpec{a("active", argBit)}},
		MethodChannelClose:   {"channel.close", replyArgs},
		MethodChannelCloseOk: {"channel.close-ok", nil},
	},
	ClassExchange: {
		10: {"exchange.declare", []argSpec{a("reserved-1", argShort), a("exchange", argShortstr), a("type", argShortstr), a("passive", argBit), a("durable", argBit), a("auto-delete", argBit), a("internal", argBit), a("no-wait", argBit), a("arguments", argTable)}},
		11: {"exchange.declare-ok", nil},
		20: {"exchange.delete", []argSpec{a("reserved-1", argShort), a("exchange", argShortstr), a("if-unused", argBit), a("no-wait", argBit)}},
		21: {"exchange.delete-ok", nil},
		30: {"exchange.bind", exBindArgs},
		31: {"exchange.bind-ok", nil},
		40: {"exchange.unbind", exBindArgs},
		51: {"exchange.unbind-ok", nil}, // 51, not 41 (RabbitMQ's amqp0-9-1.xml)
	},
	ClassQueue: {
		MethodQueueDeclare:   {"queue.declare", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("passive", argBit), a("durable", argBit), a("exclusive", argBit), a("auto-delete", argBit), a("no-wait", argBit), a("arguments", argTable)}},
		MethodQueueDeclareOk: {"queue.declare-ok", []argSpec{a("queue", argShortstr), a("message-count", argLong), a("consumer-count", argLong)}},
		20:                   {"queue.bind", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("exchange", argShortstr), a("routing-key", argShortstr), a("no-wait", argBit), a("arguments", argTable)}},
		21:                   {"queue.bind-ok", nil},
		30:                   {"queue.purge", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("no-wait", argBit)}},
		31:                   {"queue.purge-ok", messageCount},
		40:                   {"queue.delete", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("if-unused", argBit), a("if-empty", argBit), a("no-wait", argBit)}},
		41:                   {"queue.delete-ok", messageCount},
		50:                   {"queue.unbind", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("exchange", argShortstr), a("routing-key", argShortstr), a("arguments", argTable)}},
		51:                   {"queue.unbind-ok", nil},
	},
	ClassBasic: {
		10:                   {"basic.qos", []argSpec{a("prefetch-size", argLong), a("prefetch-count", argShort), a("global", argBit)}},
		11:                   {"basic.qos-ok", nil},
		MethodBasicConsume:   {"basic.consume", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("consumer-tag", argShortstr), a("no-local", argBit), a("no-ack", argBit), a("exclusive", argBit), a("no-wait", argBit), a("arguments", argTable)}},
		MethodBasicConsumeOk: {"basic.consume-ok", consumerTag},
		30:                   {"basic.cancel", []argSpec{a("consumer-tag", argShortstr), a("no-wait", argBit)}},
		31:                   {"basic.cancel-ok", consumerTag},
		MethodBasicPublish:   {"basic.publish", []argSpec{a("reserved-1", argShort), a("exchange", argShortstr), a("routing-key", argShortstr), a("mandatory", argBit), a("immediate", argBit)}},
		MethodBasicReturn:    {"basic.return", []argSpec{a("reply-code", argShort), a("reply-text", argShortstr), a("exchange", argShortstr), a("routing-key", argShortstr)}},
		MethodBasicDeliver:   {"basic.deliver", []argSpec{a("consumer-tag", argShortstr), a("delivery-tag", argLonglong), a("redelivered", argBit), a("exchange", argShortstr), a("routing-key", argShortstr)}},
		70:                   {"basic.get", []argSpec{a("reserved-1", argShort), a("queue", argShortstr), a("no-ack", argBit)}},
		MethodBasicGetOk:     {"basic.get-ok", []argSpec{a("delivery-tag", argLonglong), a("redelivered", argBit), a("exchange", argShortstr), a("routing-key", argShortstr), a("message-count", argLong)}},
		72:                   {"basic.get-empty", []argSpec{a("reserved-1", argShortstr)}},
		MethodBasicAck:       {"basic.ack", deliveryAck},
		MethodBasicReject:    {"basic.reject", []argSpec{a("delivery-tag", argLonglong), a("requeue", argBit)}},
		100:                  {"basic.recover-async", requeueOnly},
		110:                  {"basic.recover", requeueOnly},
		111:                  {"basic.recover-ok", nil},
		MethodBasicNack:      {"basic.nack", []argSpec{a("delivery-tag", argLonglong), a("multiple", argBit), a("requeue", argBit)}},
	},
	ClassConfirm: {
		MethodConfirmSelect: {"confirm.select", []argSpec{a("nowait", argBit)}},
		11:                  {"confirm.select-ok", nil},
	},
	ClassTx: {
		10: {"tx.select", nil}, 11: {"tx.select-ok", nil},
		20: {"tx.commit", nil}, 21: {"tx.commit-ok", nil},
		30: {"tx.rollback", nil}, 31: {"tx.rollback-ok", nil},
	},
}

// FullMethodName names any method in the spec's lower-case class.method
// form ("basic.publish"), or "class.method" in numbers for an unknown one.
func FullMethodName(class, method uint16) string {
	if s, ok := specs[class][method]; ok {
		return s.name
	}
	return fmt.Sprintf("%d.%d", class, method)
}

// HasContent reports whether the method carries content (spec 4.2.6:
// content header and body frames follow it on the same channel).
func HasContent(class, method uint16) bool {
	return class == ClassBasic && (method == MethodBasicPublish || method == MethodBasicReturn ||
		method == MethodBasicDeliver || method == MethodBasicGetOk)
}

// DecodeArgs decodes a method frame's payload (class and method ids
// included) into its named arguments in wire order. Bits are bool, octets
// uint8, shorts uint16, longs uint32, longlongs uint64, strings string,
// tables Table. An unknown method decodes to its ids and no arguments.
func DecodeArgs(payload []byte) (class, method uint16, args Table, err error) {
	r := &reader{b: payload}
	class, method = r.u16("class-id"), r.u16("method-id")
	if r.err != nil {
		return 0, 0, nil, r.err
	}
	s, ok := specs[class][method]
	if !ok {
		return class, method, nil, nil
	}
	args = make(Table, 0, len(s.args))
	var bits byte
	nbits := 0
	for _, as := range s.args {
		if as.typ != argBit {
			nbits = 0
		}
		var v any
		switch as.typ {
		case argBit:
			if nbits == 0 {
				bits = r.u8(as.name)
			}
			v = bits&(1<<nbits) != 0
			nbits = (nbits + 1) % 8
		case argOctet:
			v = r.u8(as.name)
		case argShort:
			v = r.u16(as.name)
		case argLong:
			v = r.u32(as.name)
		case argLonglong:
			v = r.u64(as.name)
		case argTimestamp:
			v = Timestamp(r.u64(as.name))
		case argShortstr:
			v = r.shortstr(as.name)
		case argLongstr:
			v = r.longstr(as.name)
		case argTable:
			v = r.table(0)
		}
		if r.err != nil {
			return class, method, nil, r.err
		}
		args = append(args, Field{Name: as.name, Value: v})
	}
	return class, method, args, r.done(s.name)
}

// EncodeArgs is DecodeArgs backwards: the method frame payload (class and
// method ids included) of a known method whose arguments, in wire order,
// have the Go types DecodeArgs gives.
func EncodeArgs(class, method uint16, args Table) ([]byte, error) {
	s, ok := specs[class][method]
	if !ok {
		return nil, fmt.Errorf("unknown method %d.%d", class, method)
	}
	if len(args) != len(s.args) {
		return nil, fmt.Errorf("%s: %d arguments, want %d", s.name, len(args), len(s.args))
	}
	b := binary.BigEndian.AppendUint16(nil, class)
	b = binary.BigEndian.AppendUint16(b, method)
	var bits byte
	nbits := 0
	flush := func() {
		if nbits > 0 {
			b = append(b, bits)
			bits, nbits = 0, 0
		}
	}
	for i, as := range s.args {
		v := args[i].Value
		if as.typ != argBit {
			flush()
		}
		var ok bool
		switch as.typ {
		case argBit:
			var x bool
			if x, ok = v.(bool); ok && x {
				bits |= 1 << nbits
			}
			if nbits++; nbits == 8 {
				flush()
			}
		case argOctet:
			var x uint8
			x, ok = v.(uint8)
			b = append(b, x)
		case argShort:
			var x uint16
			x, ok = v.(uint16)
			b = binary.BigEndian.AppendUint16(b, x)
		case argLong:
			var x uint32
			x, ok = v.(uint32)
			b = binary.BigEndian.AppendUint32(b, x)
		case argLonglong:
			var x uint64
			x, ok = v.(uint64)
			b = binary.BigEndian.AppendUint64(b, x)
		case argShortstr:
			var x string
			if x, ok = v.(string); ok && len(x) > 255 {
				return nil, fmt.Errorf("%s: %s is %d bytes, above 255", s.name, as.name, len(x))
			}
			b = appendShortstr(b, x)
		case argLongstr:
			var x string
			x, ok = v.(string)
			b = appendLongstr(b, []byte(x))
		case argTable:
			var x Table
			if x, ok = v.(Table); ok || v == nil {
				var err error
				if b, err = AppendTable(b, x); err != nil {
					return nil, fmt.Errorf("%s: %s: %w", s.name, as.name, err)
				}
				ok = true
			}
		}
		if !ok {
			return nil, fmt.Errorf("%s: %s is a %T", s.name, as.name, v)
		}
	}
	flush()
	return b, nil
}
