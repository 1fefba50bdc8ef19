package amqp

import (
	"encoding/binary"
	"fmt"
)

// Dir is the direction of a frame in a relayed session.
type Dir uint8

// Directions: from the client to the broker, and back.
const (
	FromClient Dir = iota
	FromBroker
)

func (d Dir) String() string {
	if d == FromBroker {
		return "broker"
	}
	return "client"
}

// FrameInfo is one frame a Decoder saw. Payload aliases the bytes fed or
// the decoder's own buffer: it is valid only during the Emit call.
type FrameInfo struct {
	Dir     Dir
	Offset  int64 // of the frame's first byte in its direction's stream
	Type    byte
	Channel uint16
	Size    uint32 // the payload size the frame declares
	// Class and Method of a method frame, the class of a content header.
	Class, Method uint16
	// The payload as far as kept: whole for method and content header
	// frames up to MaxPayload, the first KeepBody bytes of a body frame.
	// len(Payload) < Size means it was cut.
	Payload []byte
	// Err is set on a malformed frame (bad frame-end octet, unknown type, a
	// method frame too short for its ids). The stream cannot be followed
	// past it: the decoder reports it once and then only counts bytes.
	Err error
}

// DefaultMaxPayload bounds the payload a Decoder buffers for one method or
// content header frame: RabbitMQ's largest frame_max is 1 MiB.
const DefaultMaxPayload = 1 << 20

// Decoder follows one direction of an AMQP 0-9-1 session after the
// handshake (spec 4.2.3: type, channel, size, payload, frame-end), fed the
// bytes as they pass, in any split. It calls Emit once per frame. It never
// allocates for a frame whose payload arrives in one Feed; one split across
// Feeds is gathered in a buffer bounded by MaxPayload, reused frame after
// frame.
type Decoder struct {
	Dir Dir
	// Body bytes kept per body frame: 0 none, a positive count, or -1 all
	// (up to MaxPayload).
	KeepBody int
	// The most payload kept for one frame; 0 means DefaultMaxPayload.
	MaxPayload uint32
	// Emit receives each frame. It must not keep f or its Payload.
	Emit func(f *FrameInfo)

	off    int64 // stream offset of the next byte fed
	head   [frameHeaderLen]byte
	have   int    // header bytes collected for the current frame
	rem    uint64 // payload and frame-end bytes still to come
	want   int    // payload bytes to keep for the current frame
	buf    []byte // kept payload of a frame split across Feeds
	direct []byte // kept payload that arrived whole in this Feed
	frame  FrameInfo
	broken bool
}

// Feed advances the decoder over b, calling Emit for each frame completed.
func (d *Decoder) Feed(b []byte) {
	for len(b) > 0 && !d.broken {
		if d.have < frameHeaderLen {
			b = d.feedHeader(b)
			continue
		}
		b = d.feedPayload(b)
	}
	d.off += int64(len(b))
}

// Offset returns the stream offset of the next byte to be fed.
func (d *Decoder) Offset() int64 { return d.off }

// Broken reports whether the decoder met a malformed frame and stopped.
func (d *Decoder) Broken() bool { return d.broken }

func (d *Decoder) feedHeader(b []byte) []byte {
	if d.have == 0 {
		d.frame = FrameInfo{Dir: d.Dir, Offset: d.off}
		d.buf, d.direct = d.buf[:0], nil
	}
	k := copy(d.head[d.have:], b)
	d.have += k
	d.off += int64(k)
	if d.have < frameHeaderLen {
		return b[k:]
	}
	h := d.head
	d.frame.Type, d.frame.Channel = h[0], binary.BigEndian.Uint16(h[1:3])
	d.frame.Size = binary.BigEndian.Uint32(h[3:7])
	d.rem = uint64(d.frame.Size) + 1
	if !knownFrameType(h[0]) {
		d.fail(fmt.Errorf("%w: unknown frame type %d", ErrMalformed, h[0]))
		return b[k:]
	}
	d.want = d.keep()
	return b[k:]
}

// keep is how many payload bytes of the current frame are kept.
func (d *Decoder) keep() int {
	limit := d.MaxPayload
	if limit == 0 {
		limit = DefaultMaxPayload
	}
	n := min(d.frame.Size, limit)
	switch d.frame.Type {
	case FrameHeartbeat:
		return 0
	case FrameBody:
		if d.KeepBody >= 0 {
			n = min(n, uint32(d.KeepBody))
		}
	}
	return int(n)
}

func (d *Decoder) feedPayload(b []byte) []byte {
	got := int(uint64(d.frame.Size) + 1 - d.rem) // payload bytes already passed
	if got < d.want {
		need := d.want - got
		if got == 0 && uint64(len(b)) >= d.rem {
			d.direct = b[:d.want] // the whole frame is here: no copy
		} else {
			d.buf = append(d.buf, b[:min(need, len(b))]...)
		}
	}
	k := min(d.rem, uint64(len(b)))
	d.rem -= k
	d.off += int64(k)
	if d.rem == 0 {
		d.complete(b[k-1])
	}
	return b[k:]
}

func (d *Decoder) complete(end byte) {
	f := &d.frame
	f.Payload = d.direct
	if f.Payload == nil {
		f.Payload = d.buf
	}
	d.have = 0
	switch {
	case end != FrameEnd:
		d.fail(fmt.Errorf("%w: frame-end octet is 0x%02x, want 0xce", ErrMalformed, end))
		return
	case f.Type == FrameMethod && f.Size < 4:
		d.fail(fmt.Errorf("%w: method frame of %d bytes has no class and method ids", ErrMalformed, f.Size))
		return
	case f.Type == FrameMethod && len(f.Payload) >= 4:
		f.Class, f.Method = binary.BigEndian.Uint16(f.Payload), binary.BigEndian.Uint16(f.Payload[2:])
	case f.Type == FrameHeader && len(f.Payload) >= 2:
		f.Class = binary.BigEndian.Uint16(f.Payload)
	}
	d.Emit(f)
}

// fail reports the current frame as malformed, once, and stops decoding.
func (d *Decoder) fail(err error) {
	d.frame.Err = err
	d.frame.Payload = nil
	d.broken = true
	d.Emit(&d.frame)
}

// AckArgs returns the delivery tag and multiple flag of a Basic.Ack or
// Basic.Nack payload (spec 1.8.3.13, 1.8.3.16), without allocating.
func AckArgs(payload []byte) (tag uint64, multiple bool, ok bool) {
	if len(payload) < 13 {
		return 0, false, false
	}
	return binary.BigEndian.Uint64(payload[4:12]), payload[12]&1 != 0, true
}

// ReplyCode returns the reply code of a Connection.Close, Channel.Close or
// Basic.Return payload, without allocating.
func ReplyCode(payload []byte) (uint16, bool) {
	if len(payload) < 6 {
		return 0, false
	}
	return binary.BigEndian.Uint16(payload[4:6]), true
}
