package stream

import (
	"encoding/binary"
	"errors"
)

// Every message of the stream protocol is published to the default exchange
// with the destination queue's name as routing key, and its body starts with
// a fixed 44-byte header (docs/amqp-stream-protocol.md):
//
//	offset size field
//	0      1    version (1)
//	1      1    kind (kindConnect, kindAccept, kindData, kindAck, kindReset)
//	2      2    flags (flagFIN)
//	4      16   token: the receiving end's secret; zero for kindConnect
//	20     8    seq: offset of the first payload byte in the sender's byte stream
//	28     8    ack: every byte of the receiver's stream below this offset arrived
//	36     8    limit: the receiver may send bytes below this offset
//	44     -    payload
//
// Offsets count bytes from the start of each direction's stream; the FIN
// occupies one offset after the last byte, so an ack of end+1 acknowledges it.
const (
	protoVersion = 1
	headerLen    = 44
	tokenLen     = 16
)

const (
	kindConnect byte = 1 // dialer -> listener queue; payload: dialer's token
	kindAccept  byte = 2 // listener -> dialer's queue; payload: listener's token
	kindData    byte = 3 // payload: stream bytes starting at seq
	kindAck     byte = 4 // no payload: ack and limit only (also the keepalive)
	kindReset   byte = 5 // the stream is aborted
)

const (
	flagFIN uint16 = 1 // the stream ends after this message's payload
	flagGap uint16 = 2 // on an ack: data past a gap arrived, resend from ack now
)

type token [tokenLen]byte

// header is a decoded message header.
type header struct {
	kind  byte
	flags uint16
	token token
	seq   uint64
	ack   uint64
	limit uint64
}

var (
	errShort   = errors.New("amqp stream: message shorter than its header")
	errVersion = errors.New("amqp stream: unknown protocol version")
	errKind    = errors.New("amqp stream: unknown message kind")
)

// appendHeader appends h in wire form to b.
func appendHeader(b []byte, h header) []byte {
	b = append(b, protoVersion, h.kind)
	b = binary.BigEndian.AppendUint16(b, h.flags)
	b = append(b, h.token[:]...)
	b = binary.BigEndian.AppendUint64(b, h.seq)
	b = binary.BigEndian.AppendUint64(b, h.ack)
	return binary.BigEndian.AppendUint64(b, h.limit)
}

// parseMessage splits a message body into its header and payload. The payload
// aliases body.
func parseMessage(body []byte) (header, []byte, error) {
	var h header
	if len(body) < headerLen {
		return h, nil, errShort
	}
	if body[0] != protoVersion {
		return h, nil, errVersion
	}
	h.kind = body[1]
	if h.kind < kindConnect || h.kind > kindReset {
		return h, nil, errKind
	}
	h.flags = binary.BigEndian.Uint16(body[2:4])
	copy(h.token[:], body[4:20])
	h.seq = binary.BigEndian.Uint64(body[20:28])
	h.ack = binary.BigEndian.Uint64(body[28:36])
	h.limit = binary.BigEndian.Uint64(body[36:44])
	return h, body[headerLen:], nil
}
