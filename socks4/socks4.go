// Package socks4 parses SOCKS4 and SOCKS4a requests and builds replies
// (the SOCKS 4 protocol, Ying-Da Lee; SOCKS 4A extension). It imports only
// the standard library.
package socks4

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
)

var (
	// ErrNeedMore means the input is a valid prefix of a request.
	ErrNeedMore = errors.New("socks4: need more bytes")
	// ErrMalformed means no continuation of the input is a valid request.
	ErrMalformed = errors.New("socks4: malformed request")
)

// Commands.
const (
	CmdConnect = 1
	CmdBind    = 2
)

// Reply codes.
const (
	Granted  = 0x5a
	Rejected = 0x5b
)

// maxField bounds USERID and the SOCKS4a domain name.
const maxField = 255

// Request is a SOCKS4 request. Domain is set for SOCKS4a requests, whose
// IP is 0.0.0.x with x != 0.
type Request struct {
	Command uint8
	Port    uint16
	IP      netip.Addr
	User    string
	Domain  string
}

// Addr is the destination as host:port.
func (r *Request) Addr() string {
	host := r.IP.String()
	if r.Domain != "" {
		host = r.Domain
	}
	return host + ":" + strconv.Itoa(int(r.Port))
}

// Parse parses the request at the start of b and returns it with the number
// of bytes it spans.
func Parse(b []byte) (*Request, int, error) {
	if len(b) >= 1 && b[0] != 4 {
		return nil, 0, fmt.Errorf("%w: version %d", ErrMalformed, b[0])
	}
	if len(b) >= 2 && b[1] != CmdConnect && b[1] != CmdBind {
		return nil, 0, fmt.Errorf("%w: command %d", ErrMalformed, b[1])
	}
	if len(b) < 8 {
		return nil, 0, ErrNeedMore
	}
	r := &Request{Command: b[1], Port: binary.BigEndian.Uint16(b[2:4]), IP: netip.AddrFrom4([4]byte(b[4:8]))}
	user, n, err := nulString(b[8:])
	if err != nil {
		return nil, 0, err
	}
	r.User, n = user, 8+n
	ip := r.IP.As4()
	if ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] != 0 { // SOCKS4a
		domain, k, err := nulString(b[n:])
		if err != nil {
			return nil, 0, err
		}
		if domain == "" {
			return nil, 0, fmt.Errorf("%w: empty SOCKS4a domain", ErrMalformed)
		}
		r.Domain, n = domain, n+k
	}
	return r, n, nil
}

// nulString reads a NUL-terminated string of at most maxField bytes.
func nulString(b []byte) (string, int, error) {
	i := bytes.IndexByte(b[:min(len(b), maxField+1)], 0)
	switch {
	case i >= 0:
		return string(b[:i]), i + 1, nil
	case len(b) > maxField:
		return "", 0, fmt.Errorf("%w: field longer than %d bytes", ErrMalformed, maxField)
	}
	return "", 0, ErrNeedMore
}

// Reply is the 8-byte reply with the given code (Granted or Rejected).
func Reply(code byte) []byte {
	return []byte{0, code, 0, 0, 0, 0, 0, 0}
}
