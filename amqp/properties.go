package amqp

import "encoding/binary"

// basicProperties are the Basic class's content properties in flag order,
// from bit 15 down (spec 1.8, "basic" class fields).
var basicProperties = []argSpec{
	a("content-type", argShortstr), a("content-encoding", argShortstr), a("headers", argTable),
	a("delivery-mode", argOctet), a("priority", argOctet), a("correlation-id", argShortstr),
	a("reply-to", argShortstr), a("expiration", argShortstr), a("message-id", argShortstr),
	a("timestamp", argTimestamp), a("type", argShortstr), a("user-id", argShortstr),
	a("app-id", argShortstr), a("cluster-id", argShortstr),
}

// contentHeaderFixed is class-id(2) + weight(2) + body-size(8) + flags(2).
const contentHeaderFixed = 14

// ContentBodySize returns the body size a content header frame's payload
// declares (spec 4.2.6.1), without decoding its properties.
func ContentBodySize(payload []byte) (uint64, bool) {
	if len(payload) < contentHeaderFixed {
		return 0, false
	}
	return binary.BigEndian.Uint64(payload[4:12]), true
}

// ParseContentHeader decodes a content header frame's payload: its class,
// the body size and the properties present, in flag order. Only the Basic
// class defines properties; others decode with none.
func ParseContentHeader(payload []byte) (class uint16, bodySize uint64, props Table, err error) {
	r := &reader{b: payload}
	class = r.u16("class-id")
	_ = r.u16("weight")
	bodySize = r.u64("body-size")
	flags := r.u16("property-flags")
	if r.err != nil {
		return 0, 0, nil, r.err
	}
	if flags&1 != 0 {
		r.fail("property-flags continuation is not defined for class %d", class)
		return class, bodySize, nil, r.err
	}
	if class != ClassBasic {
		return class, bodySize, nil, nil
	}
	props = Table{}
	for i, p := range basicProperties {
		if flags&(1<<(15-i)) == 0 {
			continue
		}
		var v any
		switch p.typ {
		case argShortstr:
			v = r.shortstr(p.name)
		case argTable:
			v = r.table(0)
		case argOctet:
			v = r.u8(p.name)
		case argTimestamp:
			v = Timestamp(r.u64(p.name))
		}
		if r.err != nil {
			return class, bodySize, nil, r.err
		}
		props = append(props, Field{Name: p.name, Value: v})
	}
	return class, bodySize, props, r.done("content header")
}
