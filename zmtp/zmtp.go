// Package zmtp is the part of ZMTP 3.x (RFC 23 ZMTP 3.0, RFC 37 ZMTP 3.1)
// a router needs: the 64-byte greeting, frames, commands and the metadata
// of NULL's READY. It imports only the standard library.
package zmtp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

var (
	// ErrNeedMore means the input is a valid prefix.
	ErrNeedMore = errors.New("zmtp: need more bytes")
	// ErrMalformed means no continuation of the input is valid.
	ErrMalformed = errors.New("zmtp: malformed")
)

// Greeting layout (RFC 23 "The Greeting").
const (
	SignatureLen = 10 // 0xFF, 8 padding bytes, 0x7F
	GreetingLen  = 64
	majorOffset  = 10
)

// Signature is the 10 bytes a peer sends first. The padding (bytes 1-8)
// carries no meaning and is never validated: libzmq writes its identity
// length there, other stacks zeros.
func Signature() []byte { return []byte{0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0x7F} }

// CheckSignature reports whether b starts with a ZMTP signature, ErrNeedMore
// while b is a valid prefix of one.
func CheckSignature(b []byte) error {
	if len(b) >= 1 && b[0] != 0xFF {
		return fmt.Errorf("%w: first byte 0x%02x", ErrMalformed, b[0])
	}
	if len(b) < SignatureLen {
		return ErrNeedMore
	}
	if b[9] != 0x7F {
		return fmt.Errorf("%w: signature byte 10 is 0x%02x", ErrMalformed, b[9])
	}
	return nil
}

// Greeting is a parsed 64-byte greeting.
type Greeting struct {
	Major, Minor uint8
	Mechanism    string // NULL, PLAIN, CURVE, ...
	AsServer     bool
}

// ParseGreeting parses the 64-byte greeting at the start of b.
func ParseGreeting(b []byte) (Greeting, error) {
	if err := CheckSignature(b); err != nil {
		return Greeting{}, err
	}
	if len(b) > majorOffset && b[majorOffset] < 3 {
		return Greeting{}, fmt.Errorf("%w: major version %d, want 3", ErrMalformed, b[majorOffset])
	}
	if len(b) < GreetingLen {
		return Greeting{}, ErrNeedMore
	}
	mech := b[12:32]
	name := string(bytes.TrimRight(mech, "\x00"))
	if name == "" || bytes.IndexByte([]byte(name), 0) >= 0 {
		return Greeting{}, fmt.Errorf("%w: mechanism field %q", ErrMalformed, mech)
	}
	for _, c := range []byte(name) {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '+') {
			return Greeting{}, fmt.Errorf("%w: mechanism %q", ErrMalformed, name)
		}
	}
	return Greeting{Major: b[10], Minor: b[11], Mechanism: name, AsServer: b[32] == 1}, nil
}

// Frame flags (RFC 23 "Framing").
const (
	FlagMore    = 1
	FlagLong    = 2
	FlagCommand = 4
)

// Frame is one frame; Body aliases the input.
type Frame struct {
	Flags byte
	Body  []byte
}

// IsCommand reports whether the frame carries a command.
func (f Frame) IsCommand() bool { return f.Flags&FlagCommand != 0 }

// ParseFrame parses the frame at the start of b, refusing bodies above max
// before they arrive, and returns it with the bytes it spans.
func ParseFrame(b []byte, max uint64) (Frame, int, error) {
	if len(b) < 1 {
		return Frame{}, 0, ErrNeedMore
	}
	flags := b[0]
	if flags&^(FlagMore|FlagLong|FlagCommand) != 0 {
		return Frame{}, 0, fmt.Errorf("%w: reserved flag bits 0x%02x", ErrMalformed, flags)
	}
	if flags&FlagCommand != 0 && flags&FlagMore != 0 {
		return Frame{}, 0, fmt.Errorf("%w: a command frame with MORE", ErrMalformed)
	}
	var size uint64
	hdr := 2
	if flags&FlagLong != 0 {
		hdr = 9
		if len(b) < hdr {
			return Frame{}, 0, ErrNeedMore
		}
		size = binary.BigEndian.Uint64(b[1:9])
	} else {
		if len(b) < hdr {
			return Frame{}, 0, ErrNeedMore
		}
		size = uint64(b[1])
	}
	if size > max {
		return Frame{}, 0, fmt.Errorf("%w: frame of %d bytes exceeds %d", ErrMalformed, size, max)
	}
	if uint64(len(b)-hdr) < size {
		return Frame{}, 0, ErrNeedMore
	}
	n := hdr + int(size)
	return Frame{Flags: flags, Body: b[hdr:n]}, n, nil
}

// Command is a parsed command frame body.
type Command struct {
	Name string
	Data []byte
}

// ParseCommand parses a command frame's body.
func ParseCommand(body []byte) (Command, error) {
	if len(body) < 1 || int(body[0]) > len(body)-1 || body[0] == 0 {
		return Command{}, fmt.Errorf("%w: command name length", ErrMalformed)
	}
	n := int(body[0])
	return Command{Name: string(body[1 : 1+n]), Data: body[1+n:]}, nil
}

// Property is one metadata entry.
type Property struct {
	Name  string
	Value []byte
}

// ParseMetadata parses READY / INITIATE metadata: name-len(1) name
// value-len(4, BE) value, repeated.
func ParseMetadata(b []byte) ([]Property, error) {
	var out []Property
	for len(b) > 0 {
		n := int(b[0])
		if n == 0 || len(b) < 1+n+4 {
			return nil, fmt.Errorf("%w: metadata name", ErrMalformed)
		}
		name := string(b[1 : 1+n])
		b = b[1+n:]
		vl := binary.BigEndian.Uint32(b[:4])
		b = b[4:]
		if uint64(vl) > uint64(len(b)) {
			return nil, fmt.Errorf("%w: metadata value of %d bytes, %d left", ErrMalformed, vl, len(b))
		}
		out = append(out, Property{Name: name, Value: b[:vl]})
		b = b[vl:]
	}
	return out, nil
}

// PlainUsername returns the username of a PLAIN HELLO command's data
// (RFC 24: username and password, each a 1-byte length and bytes). The
// password is checked for framing but never returned.
func PlainUsername(data []byte) (string, error) {
	if len(data) < 1 || len(data) < 1+int(data[0])+1 {
		return "", fmt.Errorf("%w: PLAIN HELLO username", ErrMalformed)
	}
	n := int(data[0])
	user := string(data[1 : 1+n])
	rest := data[1+n:]
	if len(rest) != 1+int(rest[0]) {
		return "", fmt.Errorf("%w: PLAIN HELLO password length", ErrMalformed)
	}
	return user, nil
}

// GreetingTail returns bytes 11-63 of a greeting (the minor version,
// mechanism, as-server and filler), for a peer that has already been sent
// the signature and major version.
func GreetingTail(minor uint8, mechanism string) []byte {
	t := make([]byte, GreetingLen-11)
	t[0] = minor
	copy(t[1:21], mechanism)
	return t
}

// AppendError appends an ERROR command frame carrying reason (RFC 37:
// error-reason is at most 255 octets), which a peer sends instead of
// continuing the handshake; libzmq then fails the handshake with it.
func AppendError(dst []byte, reason string) []byte {
	if len(reason) > 255 {
		reason = reason[:255]
	}
	body := append([]byte{5}, "ERROR"...)
	body = append(body, byte(len(reason)))
	body = append(body, reason...)
	return append(append(dst, FlagCommand, byte(len(body))), body...)
}
