package l4amqp

import (
	"encoding/binary"
	"fmt"

	"github.com/caddyprelude/prelude/amqp"
)

// redactedResponse is what a capture holds instead of Start-Ok's response:
// a marker naming the mechanism and the user, never the password.
func redactedResponse(mechanism, user string) []byte {
	return fmt.Appendf(nil, "[redacted %s response of user %q]", mechanism, user)
}

// redactedUpdateSecret is a Connection.Update-Secret payload whose new
// secret is a marker.
func redactedUpdateSecret(reason string) []byte {
	b := binary.BigEndian.AppendUint16(nil, amqp.ClassConnection)
	b = binary.BigEndian.AppendUint16(b, amqp.MethodConnectionUpdateSecret)
	secret := []byte("[redacted new secret]")
	b = binary.BigEndian.AppendUint32(b, uint32(len(secret)))
	b = append(b, secret...)
	if len(reason) > 255 {
		reason = reason[:255]
	}
	b = append(b, byte(len(reason)))
	return append(b, reason...)
}

// handshakeFrames is the handshake as the client saw it, in order: the
// proxy's Start and Tune, the client's Start-Ok (response redacted),
// Tune-Ok and Open, and the broker's Open-Ok.
func (s *session) handshakeFrames(openOk []byte) []amqp.FrameInfo {
	startOk := *s.startOk
	startOk.Response = redactedResponse(startOk.Mechanism, s.user)
	var out []amqp.FrameInfo
	add := func(dir amqp.Dir, m amqp.Method) {
		b, err := amqp.AppendMethodFrame(nil, 0, m)
		if err != nil {
			return
		}
		out = append(out, methodFrameInfo(dir, b))
	}
	tune := s.offered
	add(amqp.FromBroker, s.h.startMethod())
	add(amqp.FromClient, &startOk)
	add(amqp.FromBroker, &tune)
	add(amqp.FromClient, s.tuneOk)
	add(amqp.FromClient, s.open)
	out = append(out, methodFrameInfo(amqp.FromBroker, openOk))
	return out
}

// methodFrameInfo describes one encoded method frame on channel 0.
func methodFrameInfo(dir amqp.Dir, frame []byte) amqp.FrameInfo {
	var fi amqp.FrameInfo
	d := amqp.Decoder{Dir: dir, Emit: func(f *amqp.FrameInfo) {
		fi = *f
		fi.Payload = append([]byte(nil), f.Payload...)
	}}
	d.Feed(frame)
	fi.Offset = -1 // not part of the relayed streams
	return fi
}

// wireFrame encodes a frame as far as its payload was kept: the 7-byte
// header with the declared size, the payload kept, and the frame-end octet
// when the payload is whole. It returns the bytes and the frame's length
// on the wire.
func wireFrame(dst []byte, f *amqp.FrameInfo) ([]byte, int) {
	dst = append(dst, f.Type)
	dst = binary.BigEndian.AppendUint16(dst, f.Channel)
	dst = binary.BigEndian.AppendUint32(dst, f.Size)
	dst = append(dst, f.Payload...)
	if len(f.Payload) == int(f.Size) {
		dst = append(dst, amqp.FrameEnd)
	}
	return dst, amqp.FrameOverhead + int(f.Size)
}
