package amqp

import "bytes"

// HeaderLen is the length of every AMQP protocol header.
const HeaderLen = 8

// Version identifies an AMQP protocol header.
type Version int

// The protocol headers a peer can open with.
const (
	VersionUnknown Version = iota
	Version091             // "AMQP" 0 0 9 1
	Version10              // "AMQP" 0 1 0 0
	Version10TLS           // "AMQP" 2 1 0 0
	Version10SASL          // "AMQP" 3 1 0 0
)

// Header091 is the header an AMQP 0-9-1 client sends first, and the header a
// 0-9-1 server answers an unsupported header with before closing (spec 4.2.2).
var Header091 = []byte{'A', 'M', 'Q', 'P', 0, 0, 9, 1}

var headers = map[Version][]byte{
	Version091:    Header091,
	Version10:     {'A', 'M', 'Q', 'P', 0, 1, 0, 0},
	Version10TLS:  {'A', 'M', 'Q', 'P', 2, 1, 0, 0},
	Version10SASL: {'A', 'M', 'Q', 'P', 3, 1, 0, 0},
}

// Bytes returns the 8 header bytes of v, or nil for VersionUnknown.
func (v Version) Bytes() []byte { return headers[v] }

// Is10 reports whether v is one of the AMQP 1.0 headers.
func (v Version) Is10() bool { return v == Version10 || v == Version10TLS || v == Version10SASL }

func (v Version) String() string {
	switch v {
	case Version091:
		return "0-9-1"
	case Version10:
		return "1.0"
	case Version10TLS:
		return "1.0-tls"
	case Version10SASL:
		return "1.0-sasl"
	}
	return "unknown"
}

// ParseHeader identifies the protocol header at the start of b. It reads at
// most HeaderLen bytes. A proper prefix of a known header gives ErrNeedMore;
// anything else that is not a known header gives ErrMalformed.
func ParseHeader(b []byte) (Version, error) {
	if len(b) > HeaderLen {
		b = b[:HeaderLen]
	}
	for v, h := range headers {
		if bytes.Equal(b, h) {
			return v, nil
		}
	}
	for _, h := range headers {
		if len(b) < HeaderLen && bytes.HasPrefix(h, b) {
			return VersionUnknown, ErrNeedMore
		}
	}
	return VersionUnknown, ErrMalformed
}
