// Package foo is the Foo line protocol: its line parser, a stream scanner
// that reassembles lines split across writes, and an analyzer that counts
// messages, measures request-to-response latency and keeps true
// per-second rates over sliding windows, with snapshots that serialise and
// restore. It imports only the standard library.
//
//	Msg  := Type SP Seq [SP Data] LF
//	Type := "REQ" | "ACK" | "NAK"
//	Seq  := decimal integer
package foo

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// Type is a message type.
type Type uint8

// Message types.
const (
	REQ Type = iota + 1
	ACK
	NAK
)

func (t Type) String() string {
	switch t {
	case REQ:
		return "REQ"
	case ACK:
		return "ACK"
	case NAK:
		return "NAK"
	}
	return "invalid"
}

// ErrMalformed means a line is not a Foo message.
var ErrMalformed = errors.New("foo: malformed line")

// Msg is one parsed line. Data aliases the input.
type Msg struct {
	Type Type
	Seq  uint64
	Data []byte
}

// ParseLine parses one line without its LF.
func ParseLine(line []byte) (Msg, error) {
	m, ok := parseLine(line)
	if !ok {
		return Msg{}, fmt.Errorf("%w: %q", ErrMalformed, clip(line, 32))
	}
	return m, nil
}

// parseLine is ParseLine without building an error.
func parseLine(line []byte) (Msg, bool) {
	t, seq, end, ok := parseHead(line)
	if !ok || end < len(line) && line[end] != ' ' {
		return Msg{}, false
	}
	m := Msg{Type: t, Seq: seq}
	if end < len(line) {
		m.Data = line[end+1:]
	}
	return m, true
}

// parseHead parses the Type and Seq at the start of b, a line with or
// without its LF and what follows, and returns where the Seq ends: at a
// space, an LF or the end of b. Seq is 1 to 20 digits and must fit a
// uint64. b holds no LF before end, whether or not the head parsed.
func parseHead(b []byte) (t Type, seq uint64, end int, ok bool) {
	if len(b) < 5 || b[3] != ' ' {
		return 0, 0, 0, false
	}
	switch string(b[:3]) {
	case "REQ":
		t = REQ
	case "ACK":
		t = ACK
	case "NAK":
		t = NAK
	default:
		return 0, 0, 0, false
	}
	for end = 4; end < len(b) && b[end] != ' ' && b[end] != '\n'; end++ {
		d := b[end] - '0'
		if d > 9 || end-4 == 19 && seq > (1<<64-1-uint64(d))/10 {
			return 0, 0, end, false // not a digit, or the 20th overflows
		}
		seq = seq*10 + uint64(d)
	}
	if digits := end - 4; digits == 0 || digits > 20 {
		return 0, 0, end, false
	}
	return t, seq, end, true
}

// clip returns at most n bytes of b, for error messages.
func clip(b []byte, n int) []byte { return b[:min(len(b), n)] }

// MatchFirstLine decides whether b starts like a client's first Foo line,
// "REQ <digits>", looking at no more than maxPrefix bytes. It returns
// (true, seq) on a decision to match, ErrNeedMore while b is a valid prefix,
// and false otherwise.
func MatchFirstLine(b []byte) (bool, uint64, error) {
	const head = "REQ "
	k := min(len(b), len(head))
	if string(b[:k]) != head[:k] {
		return false, 0, nil
	}
	if len(b) <= len(head) {
		return false, 0, ErrNeedMore
	}
	digits := 0
	for _, c := range b[len(head):] {
		if c < '0' || c > '9' {
			break
		}
		digits++
		if digits > 20 {
			return false, 0, nil
		}
	}
	if digits == 0 {
		return false, 0, nil
	}
	end := len(head) + digits
	if end == len(b) {
		return false, 0, ErrNeedMore // the seq may go on
	}
	if c := b[end]; c != ' ' && c != '\n' {
		return false, 0, nil
	}
	seq, err := strconv.ParseUint(string(b[len(head):end]), 10, 64)
	if err != nil {
		return false, 0, nil
	}
	return true, seq, nil
}

// ErrNeedMore means more bytes are needed to decide.
var ErrNeedMore = errors.New("foo: need more bytes")

// Scanner splits a byte stream into lines as it flows by, however the
// stream is cut into writes. It keeps at most max bytes of a partial line.
type Scanner struct {
	max     int
	partial []byte
}

// ErrLineTooLong means a line exceeded the scanner's limit.
var ErrLineTooLong = errors.New("foo: line too long")

// NewScanner returns a scanner for lines of at most max bytes (LF excluded).
func NewScanner(max int) *Scanner { return &Scanner{max: max} }

// Feed passes each complete line in b (without its LF) to fn, keeping the
// rest for the next call. It stops with ErrLineTooLong when a line grows
// past the limit.
func (s *Scanner) Feed(b []byte, fn func(line []byte)) error {
	for {
		line, rest, ok, err := s.next(b)
		if !ok {
			return err
		}
		fn(line)
		b = rest
	}
}

// next returns the first complete line of b, with any partial line kept
// from earlier calls prepended, and the bytes after its LF. Without a
// complete line, b is kept and ok is false. The line is valid until the
// next call.
func (s *Scanner) next(b []byte) (line, rest []byte, ok bool, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(s.partial)+len(b) > s.max {
			return nil, nil, false, ErrLineTooLong
		}
		s.partial = append(s.partial, b...)
		return nil, nil, false, nil
	}
	if len(s.partial) == 0 {
		if i > s.max {
			return nil, nil, false, ErrLineTooLong
		}
		return b[:i], b[i+1:], true, nil
	}
	if len(s.partial)+i > s.max {
		return nil, nil, false, ErrLineTooLong
	}
	line = append(s.partial, b[:i]...)
	s.partial = line[:0]
	return line, b[i+1:], true, nil
}

// Flush passes a final line that had no LF to fn, if there is one.
func (s *Scanner) Flush(fn func(line []byte)) {
	if len(s.partial) > 0 {
		fn(s.partial)
		s.partial = s.partial[:0]
	}
}
