package amqp

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Frame types (spec 4.2.3; RabbitMQ uses 8 for heartbeats).
const (
	FrameMethod    byte = 1
	FrameHeader    byte = 2
	FrameBody      byte = 3
	FrameHeartbeat byte = 8
)

// FrameEnd terminates every frame.
const FrameEnd byte = 0xCE

// frameHeaderLen is type(1) + channel(2) + size(4).
const frameHeaderLen = 7

// FrameOverhead is the bytes a frame adds around its payload.
const FrameOverhead = frameHeaderLen + 1

// FrameMinSize is the frame-max every peer must accept before Tune-Ok, and
// the smallest frame-max a peer may negotiate (spec 4.2.3, "frame-min-size").
const FrameMinSize = 4096

// Frame is one AMQP 0-9-1 frame.
type Frame struct {
	Type    byte
	Channel uint16
	Payload []byte
}

// ParseFrame decodes the frame at the start of b. maxSize bounds the whole
// frame (header, payload and end octet), as frame-max does in the spec; a
// larger declared size gives ErrFrameTooLarge before anything is allocated.
// It returns the frame and the number of bytes it spans. The payload aliases b.
func ParseFrame(b []byte, maxSize uint32) (Frame, int, error) {
	typ, ch, size, err := parseFrameHeader(b, maxSize)
	if err != nil {
		return Frame{}, 0, err
	}
	total := frameHeaderLen + int(size) + 1
	if len(b) < total {
		return Frame{}, 0, ErrNeedMore
	}
	if b[total-1] != FrameEnd {
		return Frame{}, 0, fmt.Errorf("%w: frame-end octet is 0x%02x, want 0xce", ErrMalformed, b[total-1])
	}
	return Frame{Type: typ, Channel: ch, Payload: b[frameHeaderLen : total-1]}, total, nil
}

// ReadFrame reads exactly one frame from r, never more bytes than the frame
// spans, so that whatever follows stays in r for the data path.
func ReadFrame(r io.Reader, maxSize uint32) (Frame, error) {
	var hdr [frameHeaderLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Frame{}, err
	}
	typ, ch, size, err := parseFrameHeader(hdr[:], maxSize)
	if err != nil {
		return Frame{}, err
	}
	rest := make([]byte, int(size)+1)
	if _, err := io.ReadFull(r, rest); err != nil {
		return Frame{}, unexpectedEOF(err)
	}
	if rest[size] != FrameEnd {
		return Frame{}, fmt.Errorf("%w: frame-end octet is 0x%02x, want 0xce", ErrMalformed, rest[size])
	}
	return Frame{Type: typ, Channel: ch, Payload: rest[:size]}, nil
}

func parseFrameHeader(b []byte, maxSize uint32) (typ byte, ch uint16, size uint32, err error) {
	if len(b) >= 1 && !knownFrameType(b[0]) {
		return 0, 0, 0, fmt.Errorf("%w: unknown frame type %d", ErrMalformed, b[0])
	}
	if len(b) < frameHeaderLen {
		return 0, 0, 0, ErrNeedMore
	}
	typ, ch, size = b[0], binary.BigEndian.Uint16(b[1:3]), binary.BigEndian.Uint32(b[3:7])
	if uint64(size)+FrameOverhead > uint64(maxSize) {
		return 0, 0, 0, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, uint64(size)+FrameOverhead, maxSize)
	}
	return typ, ch, size, nil
}

func knownFrameType(t byte) bool {
	return t == FrameMethod || t == FrameHeader || t == FrameBody || t == FrameHeartbeat
}

// AppendFrame appends the encoding of f to dst.
func AppendFrame(dst []byte, f Frame) []byte {
	dst = append(dst, f.Type)
	dst = binary.BigEndian.AppendUint16(dst, f.Channel)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(f.Payload)))
	dst = append(dst, f.Payload...)
	return append(dst, FrameEnd)
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
