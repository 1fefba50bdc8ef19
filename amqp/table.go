package amqp

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Table is an AMQP field table in wire order. Each value has the Go type of
// its wire tag, so that decoding and re-encoding a table gives back the same
// bytes (RabbitMQ's tag set, amqp-0-9-1-errata "Field types"):
//
//	t bool          b int8      B uint8      s int16     u uint16
//	I int32         i uint32    l int64      f float32   d float64
//	D Decimal       S string    A []any      T Timestamp F Table
//	V nil           x []byte
type Table []Field

// Field is one named value of a Table.
type Field struct {
	Name  string
	Value any
}

// Decimal is the 'D' field type: Value / 10^Scale.
type Decimal struct {
	Scale uint8
	Value int32
}

// Timestamp is the 'T' field type: seconds since the Unix epoch.
type Timestamp uint64

// maxTableDepth bounds the nesting of tables and arrays, so that hostile input
// cannot exhaust the stack.
const maxTableDepth = 16

// Get returns the value of the first field called name.
func (t Table) Get(name string) (any, bool) {
	for _, f := range t {
		if f.Name == name {
			return f.Value, true
		}
	}
	return nil, false
}

// Set gives the first field called name the value v, or appends such a
// field, and returns the table.
func (t Table) Set(name string, v any) Table {
	for i := range t {
		if t[i].Name == name {
			t[i].Value = v
			return t
		}
	}
	return append(t, Field{Name: name, Value: v})
}

// String returns the value of the string field called name, or "".
func (t Table) String(name string) string {
	v, _ := t.Get(name)
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

// ParseTable decodes a field table body: the bytes after its 4-byte length.
func ParseTable(b []byte) (Table, error) {
	r := &reader{b: b}
	t := r.tableBody(0)
	return t, r.done("field table")
}

func (r *reader) table(depth int) Table {
	body := r.longbytes("field table")
	if r.err != nil {
		return nil
	}
	sub := &reader{b: body}
	t := sub.tableBody(depth)
	if err := sub.done("field table"); err != nil {
		r.err = err
	}
	return t
}

func (r *reader) tableBody(depth int) Table {
	if depth > maxTableDepth {
		r.fail("field tables nested deeper than %d", maxTableDepth)
		return nil
	}
	t := Table{}
	for r.err == nil && len(r.b) > 0 {
		name := r.shortstr("field name")
		v := r.fieldValue(depth)
		if r.err == nil {
			t = append(t, Field{Name: name, Value: v})
		}
	}
	return t
}

func (r *reader) array(depth int) []any {
	body := r.longbytes("field array")
	if r.err != nil {
		return nil
	}
	if depth > maxTableDepth {
		r.fail("field arrays nested deeper than %d", maxTableDepth)
		return nil
	}
	sub := &reader{b: body}
	a := []any{}
	for sub.err == nil && len(sub.b) > 0 {
		v := sub.fieldValue(depth)
		if sub.err == nil {
			a = append(a, v)
		}
	}
	r.err = sub.err
	return a
}

func (r *reader) fieldValue(depth int) any {
	tag := r.u8("field type")
	if r.err != nil {
		return nil
	}
	switch tag {
	case 't':
		return r.u8("bool") != 0
	case 'b':
		return int8(r.u8("int8"))
	case 'B':
		return r.u8("uint8")
	case 's':
		return int16(r.u16("int16"))
	case 'u':
		return r.u16("uint16")
	case 'I':
		return int32(r.u32("int32"))
	case 'i':
		return r.u32("uint32")
	case 'l':
		return int64(r.u64("int64"))
	case 'f':
		return math.Float32frombits(r.u32("float"))
	case 'd':
		return math.Float64frombits(r.u64("double"))
	case 'D':
		return Decimal{Scale: r.u8("decimal scale"), Value: int32(r.u32("decimal value"))}
	case 'S':
		return r.longstr("longstr")
	case 'x':
		return append([]byte(nil), r.longbytes("byte array")...)
	case 'A':
		return r.array(depth + 1)
	case 'T':
		return Timestamp(r.u64("timestamp"))
	case 'F':
		return r.table(depth + 1)
	case 'V':
		return nil
	}
	r.fail("unknown field type %q", tag)
	return nil
}

// AppendTable appends t with its 4-byte length prefix. It fails only on a
// value whose Go type has no wire tag.
func AppendTable(dst []byte, t Table) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	var err error
	for _, f := range t {
		dst = appendShortstr(dst, f.Name)
		if dst, err = appendFieldValue(dst, f.Value); err != nil {
			return nil, fmt.Errorf("field %q: %w", f.Name, err)
		}
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst, nil
}

func appendFieldValue(dst []byte, v any) ([]byte, error) {
	be := binary.BigEndian
	switch v := v.(type) {
	case bool:
		b := byte(0)
		if v {
			b = 1
		}
		return append(dst, 't', b), nil
	case int8:
		return append(dst, 'b', byte(v)), nil
	case uint8:
		return append(dst, 'B', v), nil
	case int16:
		return be.AppendUint16(append(dst, 's'), uint16(v)), nil
	case uint16:
		return be.AppendUint16(append(dst, 'u'), v), nil
	case int32:
		return be.AppendUint32(append(dst, 'I'), uint32(v)), nil
	case uint32:
		return be.AppendUint32(append(dst, 'i'), v), nil
	case int64:
		return be.AppendUint64(append(dst, 'l'), uint64(v)), nil
	case float32:
		return be.AppendUint32(append(dst, 'f'), math.Float32bits(v)), nil
	case float64:
		return be.AppendUint64(append(dst, 'd'), math.Float64bits(v)), nil
	case Decimal:
		return be.AppendUint32(append(dst, 'D', v.Scale), uint32(v.Value)), nil
	case string:
		return appendLongstr(append(dst, 'S'), []byte(v)), nil
	case []byte:
		return appendLongstr(append(dst, 'x'), v), nil
	case Timestamp:
		return be.AppendUint64(append(dst, 'T'), uint64(v)), nil
	case Table:
		return AppendTable(append(dst, 'F'), v)
	case []any:
		return appendArray(append(dst, 'A'), v)
	case nil:
		return append(dst, 'V'), nil
	}
	return nil, fmt.Errorf("no AMQP field type for Go type %T", v)
}

func appendArray(dst []byte, a []any) ([]byte, error) {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	var err error
	for _, v := range a {
		if dst, err = appendFieldValue(dst, v); err != nil {
			return nil, err
		}
	}
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst, nil
}
