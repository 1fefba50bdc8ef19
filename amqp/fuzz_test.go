package amqp

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func addCaptureSeeds(f *testing.F) {
	for _, h := range loadCaptures(f) {
		f.Add(h.client)
		f.Add(h.server)
		f.Add(h.client[HeaderLen:])
	}
	for _, b := range otherProtocols {
		f.Add(b)
	}
}

// FuzzFrames: any input parses as frames or fails cleanly; a parsed frame
// re-encodes to the bytes it came from.
func FuzzFrames(f *testing.F) {
	addCaptureSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			fr, n, err := ParseFrame(b, 1<<20)
			if err != nil {
				return
			}
			if !bytes.Equal(AppendFrame(nil, fr), b[:n]) {
				t.Fatalf("frame does not re-encode to its bytes")
			}
			r, err := ReadFrame(bytes.NewReader(b), 1<<20)
			if err != nil || !bytes.Equal(r.Payload, fr.Payload) {
				t.Fatalf("ReadFrame disagrees with ParseFrame: %v", err)
			}
			b = b[n:]
		}
	})
}

// FuzzMethod: any method payload decodes or fails cleanly; a decoded method
// re-encodes and decodes to the same value.
func FuzzMethod(f *testing.F) {
	for _, h := range loadCaptures(f) {
		for _, s := range [][]byte{h.client[HeaderLen:], h.server} {
			for len(s) > 0 {
				fr, n, err := ParseFrame(s, 1<<20)
				if err != nil {
					break
				}
				f.Add(fr.Payload)
				s = s[n:]
			}
		}
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, err := ParseMethod(payload)
		if err != nil {
			return
		}
		enc, err := AppendMethodFrame(nil, 0, m)
		if err != nil {
			return // a decoded value always encodes; only OtherMethod args are opaque
		}
		fr, _, err := ParseFrame(enc, 1<<21)
		if err != nil {
			t.Fatalf("re-encoded frame: %v", err)
		}
		m2, err := ParseMethod(fr.Payload)
		if err != nil || !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("round trip: %#v -> %#v (%v)", m, m2, err)
		}
	})
}

// normalize maps NaN floats to a comparable value for DeepEqual.
func normalize(m Method) string { return fmtMethod(m) }

// FuzzTable: any table body decodes or fails cleanly, and decoding is stable:
// a decoded table re-encodes to bytes that decode and encode to themselves.
// (Exact input bytes are not kept: a bool octet of 2 reads as true.)
func FuzzTable(f *testing.F) {
	am, _ := AppendTable(nil, Table{{"LOGIN", "guest"}, {"PASSWORD", "guest"}})
	f.Add(am[4:])
	addCaptureSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		tbl, err := ParseTable(b)
		if err != nil {
			return
		}
		enc, err := AppendTable(nil, tbl)
		if err != nil {
			t.Fatalf("decoded table does not encode: %v", err)
		}
		tbl2, err := ParseTable(enc[4:])
		if err != nil {
			t.Fatalf("re-encoded table does not decode: %v", err)
		}
		enc2, _ := AppendTable(nil, tbl2)
		if !bytes.Equal(enc, enc2) {
			t.Fatalf("table encoding is not stable")
		}
	})
}

func fmtMethod(m Method) string {
	b, _ := AppendMethodFrame(nil, 0, m)
	return string(b)
}

// FuzzSessionDecoder: any stream decodes the same whatever its split, never
// panics, and every frame it yields decodes or fails cleanly. Seeds: both
// directions of the recorded session (testdata/session-*.bin).
func FuzzSessionDecoder(f *testing.F) {
	for _, b := range sessionStreams(f) {
		f.Add(b, uint16(len(b)/2))
	}
	for _, b := range otherProtocols {
		f.Add(b, uint16(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, split uint16) {
		var whole, parts []string
		decode := func(f *FrameInfo) string {
			switch f.Type {
			case FrameMethod:
				_, _, _, _ = DecodeArgs(f.Payload)
			case FrameHeader:
				_, _, _, _ = ParseContentHeader(f.Payload)
			}
			return describe(f)
		}
		d1 := &Decoder{KeepBody: -1, MaxPayload: 1 << 16, Emit: func(f *FrameInfo) { whole = append(whole, decode(f)) }}
		d1.Feed(b)
		d2 := &Decoder{KeepBody: -1, MaxPayload: 1 << 16, Emit: func(f *FrameInfo) { parts = append(parts, decode(f)) }}
		s := min(int(split), len(b))
		d2.Feed(b[:s])
		d2.Feed(b[s:])
		if !reflect.DeepEqual(whole, parts) || d1.Offset() != int64(len(b)) || d2.Offset() != int64(len(b)) {
			t.Fatalf("split at %d changes the frames:\n%v\n%v", s, whole, parts)
		}
		o := NewObserver(nil)
		d3 := &Decoder{Emit: o.Observe}
		d3.Feed(b)
	})
}

// FuzzCheckMethod: CheckMethod never panics and agrees with DecodeArgs on
// which payloads of known methods are well formed.
func FuzzCheckMethod(f *testing.F) {
	for _, b := range sessionStreams(f) {
		for len(b) > 0 {
			fr, n, err := ParseFrame(b, 1<<20)
			if err != nil {
				break
			}
			if fr.Type == FrameMethod {
				f.Add(fr.Payload)
			}
			b = b[n:]
		}
	}
	for _, b := range otherProtocols {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		class, method, err := CheckMethod(b)
		_, _, _, derr := DecodeArgs(b)
		if errors.Is(err, ErrUnknownMethod) || len(b) < 4 {
			return
		}
		if (err == nil) != (derr == nil) {
			t.Fatalf("%s: CheckMethod %v, DecodeArgs %v", FullMethodName(class, method), err, derr)
		}
	})
}

// FuzzClientChannels: any frame sequence is checked without a panic, and
// the pending count matches the channels left in a message.
func FuzzClientChannels(f *testing.F) {
	for _, b := range sessionStreams(f) {
		f.Add(b)
	}
	for _, b := range otherProtocols {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := &ClientChannels{ChannelMax: 16, MaxContent: 1 << 16}
		for len(b) > 0 {
			fr, n, err := ParseFrame(b, 1<<16)
			if err != nil {
				return
			}
			b = b[n:]
			got, err := c.Check(fr)
			if err != nil {
				return
			}
			switch got.Step {
			case StepChannelClose:
				c.PeerCloseOk(fr.Channel)
			case StepForward:
				if fr.Channel%3 == 0 {
					c.PeerClose(fr.Channel)
				}
			}
			inMessage := 0
			for _, ch := range c.Channels() {
				if k := c.chans[ch]; k.content != noContent {
					inMessage++
				}
			}
			if inMessage != c.Pending() {
				t.Fatalf("pending %d, channels in a message %d", c.Pending(), inMessage)
			}
		}
	})
}
