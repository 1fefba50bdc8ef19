package amqp

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrUnknownMethod is CheckMethod's error for a class and method id pair
// the spec does not define.
var ErrUnknownMethod = errors.New("amqp: unknown method")

// CheckMethod checks that a method frame's payload is a method of the spec
// whose arguments are well formed (spec 4.2.5: every length within the
// frame, every field table well formed, no trailing bytes), without
// allocating on success. A broker answers a malformed method with a
// connection exception (502 SYNTAX_ERROR), so a proxy that shares one
// broker connection among clients checks each client's methods first.
func CheckMethod(payload []byte) (class, method uint16, err error) {
	if len(payload) < 4 {
		return 0, 0, errMethodTooShort
	}
	class, method = binary.BigEndian.Uint16(payload), binary.BigEndian.Uint16(payload[2:])
	s, ok := specs[class][method]
	if !ok {
		return class, method, ErrUnknownMethod
	}
	r := &reader{b: payload[4:]}
	nbits := 0
	for _, as := range s.args {
		if as.typ == argBit {
			if nbits == 0 {
				r.u8(as.name)
			}
			nbits = (nbits + 1) % 8
			continue
		}
		nbits = 0
		r.skipArg(as)
		if r.err != nil {
			return class, method, r.err
		}
	}
	return class, method, r.done(s.name)
}

var errMethodTooShort = fmt.Errorf("%w: method frame shorter than its class and method ids", ErrMalformed)

// CheckContentHeader checks a content header frame's payload (spec 4.2.6.1):
// its class, and that the properties its flags announce are well formed and
// fill the payload exactly. It returns the body size.
func CheckContentHeader(payload []byte) (class uint16, bodySize uint64, err error) {
	r := &reader{b: payload}
	class = r.u16("class-id")
	_ = r.u16("weight")
	bodySize = r.u64("body-size")
	flags := r.u16("property-flags")
	if r.err != nil {
		return 0, 0, r.err
	}
	if class != ClassBasic {
		r.fail("content header of class %d, not basic", class)
		return class, bodySize, r.err
	}
	if flags&1 != 0 {
		r.fail("property-flags continuation is not defined for class basic")
		return class, bodySize, r.err
	}
	if flags&(uint16(1)<<(16-len(basicProperties))-1)&^1 != 0 {
		r.fail("property-flags 0x%04x set bits basic does not define", flags)
		return class, bodySize, r.err
	}
	for i, p := range basicProperties {
		if flags&(1<<(15-i)) != 0 {
			r.skipArg(p)
		}
	}
	return class, bodySize, r.done("content header")
}

// skipArg steps over one argument of type as.typ (not a bit).
func (r *reader) skipArg(as argSpec) {
	switch as.typ {
	case argOctet:
		r.take(1, as.name)
	case argShort:
		r.take(2, as.name)
	case argLong:
		r.take(4, as.name)
	case argLonglong, argTimestamp:
		r.take(8, as.name)
	case argShortstr:
		r.take(int(r.u8(as.name)), as.name)
	case argLongstr:
		r.longbytes(as.name)
	case argTable:
		r.skipTable(0)
	}
}

// skipTable steps over a field table with its length, checking every value
// as ParseTable would, without building it.
func (r *reader) skipTable(depth int) {
	body := r.longbytes("field table")
	if r.err != nil {
		return
	}
	if depth > maxTableDepth {
		r.fail("field tables nested deeper than %d", maxTableDepth)
		return
	}
	sub := reader{b: body}
	for sub.err == nil && len(sub.b) > 0 {
		sub.take(int(sub.u8("field name")), "field name")
		sub.skipFieldValue(depth)
	}
	if sub.err != nil {
		r.err = sub.err
	}
}

func (r *reader) skipArray(depth int) {
	body := r.longbytes("field array")
	if r.err != nil {
		return
	}
	if depth > maxTableDepth {
		r.fail("field arrays nested deeper than %d", maxTableDepth)
		return
	}
	sub := reader{b: body}
	for sub.err == nil && len(sub.b) > 0 {
		sub.skipFieldValue(depth)
	}
	if sub.err != nil {
		r.err = sub.err
	}
}

// fieldSizes are the fixed sizes of the scalar field types (table.go).
var fieldSizes = [256]int8{
	't': 1, 'b': 1, 'B': 1, 's': 2, 'u': 2, 'I': 4, 'i': 4, 'l': 8,
	'f': 4, 'd': 8, 'D': 5, 'T': 8, 'V': 0,
	// -1: variable length
	'S': -1, 'x': -1, 'A': -1, 'F': -1,
}

func (r *reader) skipFieldValue(depth int) {
	tag := r.u8("field type")
	if r.err != nil {
		return
	}
	switch tag {
	case 'S', 'x':
		r.longbytes("longstr")
	case 'A':
		r.skipArray(depth + 1)
	case 'F':
		r.skipTable(depth + 1)
	case 'V':
	default:
		if n := fieldSizes[tag]; n > 0 {
			r.take(int(n), "field value")
			return
		}
		r.fail("unknown field type %q", tag)
	}
}
