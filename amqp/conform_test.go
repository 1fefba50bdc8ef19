package amqp

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

// sessionFrames splits a recorded stream (testdata/session-*.bin) into frames.
func sessionFrames(t testing.TB, b []byte) []Frame {
	t.Helper()
	var out []Frame
	for len(b) > 0 {
		f, n, err := ParseFrame(b, 1<<20)
		if err != nil {
			t.Fatalf("recorded session: %v", err)
		}
		out = append(out, f)
		b = b[n:]
	}
	return out
}

// The handshake's frames are the proxy's business; ClientChannels starts
// after connection.open.
func afterOpen(t testing.TB, frames []Frame) []Frame {
	for i, f := range frames {
		if f.Type == FrameMethod && f.Channel == 0 && len(f.Payload) >= 4 &&
			binary.BigEndian.Uint16(f.Payload[2:]) == MethodOpen {
			return frames[i+1:]
		}
	}
	t.Fatal("recorded session has no connection.open")
	return nil
}

func TestCheckMethodAcceptsEveryRecordedMethod(t *testing.T) {
	for dir, b := range sessionStreams(t) {
		for _, f := range sessionFrames(t, b) {
			if f.Type != FrameMethod {
				continue
			}
			class, method, err := CheckMethod(f.Payload)
			if err != nil {
				t.Errorf("%s %s: %v", dir, FullMethodName(class, method), err)
				continue
			}
			// Every truncated prefix fails (arguments have no optional tail).
			for n := range len(f.Payload) {
				if _, _, err := CheckMethod(f.Payload[:n]); err == nil {
					t.Errorf("%s %s: prefix of %d/%d bytes accepted", dir, FullMethodName(class, method), n, len(f.Payload))
				}
			}
		}
	}
}

func TestCheckContentHeaderAcceptsRecordedHeaders(t *testing.T) {
	seen := 0
	for dir, b := range sessionStreams(t) {
		for _, f := range sessionFrames(t, b) {
			if f.Type != FrameHeader {
				continue
			}
			seen++
			_, size, err := CheckContentHeader(f.Payload)
			_, want, _, _ := ParseContentHeader(f.Payload)
			if err != nil || size != want {
				t.Errorf("%s: CheckContentHeader = %d, %v; want %d", dir, size, err, want)
			}
			for n := range len(f.Payload) {
				if _, _, err := CheckContentHeader(f.Payload[:n]); err == nil {
					t.Errorf("%s: prefix of %d/%d bytes accepted", dir, n, len(f.Payload))
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("the recorded session has no content header")
	}
}

func TestCheckMethodDoesNotAllocate(t *testing.T) {
	var payloads [][]byte
	for _, f := range sessionFrames(t, sessionStreams(t)[FromClient]) {
		if f.Type == FrameMethod {
			payloads = append(payloads, f.Payload)
		}
	}
	allocs := testing.AllocsPerRun(10, func() {
		for _, p := range payloads {
			_, _, _ = CheckMethod(p)
		}
	})
	if allocs != 0 {
		t.Fatalf("CheckMethod allocates %.0f times per session", allocs)
	}
}

func TestClientChannelsAcceptARealClient(t *testing.T) {
	c := &ClientChannels{ChannelMax: 2047}
	frames := afterOpen(t, sessionFrames(t, sessionStreams(t)[FromClient]))
	broker := sessionFrames(t, sessionStreams(t)[FromBroker])
	steps := map[Step]int{}
	for _, f := range frames {
		got, err := c.Check(f)
		if err != nil {
			t.Fatalf("frame on channel %d: %v", f.Channel, err)
		}
		steps[got.Step]++
		if got.Step == StepChannelClose {
			c.PeerCloseOk(f.Channel) // as the broker's close-ok would
		}
	}
	if steps[StepChannelOpen] == 0 || steps[StepForward] == 0 || steps[StepConnection] != 1 {
		t.Fatalf("steps %v: want channel opens, forwards and one connection.close", steps)
	}
	if c.Pending() != 0 {
		t.Fatalf("%d channels left in a message", c.Pending())
	}
	_ = broker
}

// Every truncated prefix of a real client's stream checks cleanly, frame by
// frame, up to the last whole frame: truncation never makes a frame wrong.
func TestClientChannelsTruncatedStreams(t *testing.T) {
	stream := sessionStreams(t)[FromClient]
	for n := 0; n <= len(stream); n += 7 {
		var c ClientChannels
		b := stream[:n]
		fr := NewFrameReader(strings.NewReader(string(b)))
		opened := false
		for {
			f, err := fr.ReadFrame(1 << 20)
			if err != nil {
				break
			}
			if !opened {
				opened = f.Type == FrameMethod && f.Channel == 0 && binary.BigEndian.Uint16(f.Payload[2:]) == MethodOpen
				continue
			}
			if got, err := c.Check(f); err != nil {
				t.Fatalf("prefix %d: %v", n, err)
			} else if got.Step == StepChannelClose {
				c.PeerCloseOk(f.Channel)
			}
		}
	}
}

func method(class, id uint16, args ...byte) Frame {
	p := binary.BigEndian.AppendUint16(nil, class)
	p = binary.BigEndian.AppendUint16(p, id)
	return Frame{Type: FrameMethod, Payload: append(p, args...)}
}

func on(ch uint16, f Frame) Frame { f.Channel = ch; return f }

var (
	channelOpen    = method(ClassChannel, MethodChannelOpen, 0)
	channelClose   = method(ClassChannel, MethodChannelClose, 0, 200, 0, 0, 0, 0, 0)
	channelCloseOk = method(ClassChannel, MethodChannelCloseOk)
	publish        = method(ClassBasic, MethodBasicPublish, 0, 0, 0, 1, 'q', 0)
	basicDeliver   = method(ClassBasic, MethodBasicDeliver, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0)
)

func header(size uint64) Frame {
	p := binary.BigEndian.AppendUint16(nil, ClassBasic)
	p = append(p, 0, 0)
	p = binary.BigEndian.AppendUint64(p, size)
	return Frame{Type: FrameHeader, Payload: append(p, 0, 0)}
}

func body(s string) Frame { return Frame{Type: FrameBody, Payload: []byte(s)} }

func TestClientChannelsViolations(t *testing.T) {
	tests := []struct {
		name   string
		frames []Frame
		code   uint16
		text   string
	}{
		{"method on a channel never opened", []Frame{on(1, publish)}, ReplyChannelError, "expected 'channel.open'"},
		{"second open", []Frame{on(1, channelOpen), on(1, channelOpen)}, ReplyChannelError, "second 'channel.open'"},
		{"body without header", []Frame{on(1, channelOpen), on(1, publish), on(1, body("x"))}, ReplyUnexpectedFrame, "expected a content header"},
		{"method inside a message", []Frame{on(1, channelOpen), on(1, publish), on(1, header(3)), on(1, body("x")), on(1, publish)}, ReplyUnexpectedFrame, "expected a content body"},
		{"body longer than declared", []Frame{on(1, channelOpen), on(1, publish), on(1, header(1)), on(1, body("xy"))}, ReplyFrameError, "only 1 due"},
		{"header outside a message", []Frame{on(1, channelOpen), on(1, header(1))}, ReplyUnexpectedFrame, "outside a message"},
		{"server method", []Frame{on(1, channelOpen), on(1, basicDeliver)}, ReplyCommandInvalid, "basic.deliver is sent by servers"},
		{"unknown method", []Frame{on(1, channelOpen), on(1, method(60, 99))}, ReplyNotImplemented, "unknown method 60.99"},
		{"malformed arguments", []Frame{on(1, channelOpen), on(1, method(ClassBasic, MethodBasicPublish, 0, 0, 9))}, ReplySyntaxError, "basic.publish"},
		{"heartbeat on a channel", []Frame{{Type: FrameHeartbeat, Channel: 3}}, ReplyFrameError, "heartbeat frame on channel 3"},
		{"channel above channel_max", []Frame{on(9, channelOpen)}, ReplyNotAllowed, "above the negotiated channel_max 8"},
		{"content on channel 0", []Frame{header(1)}, ReplyChannelError, "channel 0"},
		{"channel method on channel 0", []Frame{channelOpen}, ReplyChannelError, "channel.open on channel 0"},
		{"connection method on a channel", []Frame{on(1, channelOpen), on(1, method(ClassConnection, MethodClose, 0, 200, 0, 0, 0, 0, 0))}, ReplyCommandInvalid, "connection.close on channel 1"},
		{"close-ok nobody asked for", []Frame{on(1, channelOpen), on(1, channelCloseOk)}, ReplyCommandInvalid, "which nobody closed"},
		{"message above the bound", []Frame{on(1, channelOpen), on(1, publish), on(1, header(1<<30))}, ReplyContentTooLarge, "1073741824 bytes"},
		{"unknown frame type", []Frame{{Type: 5, Channel: 1}}, ReplyFrameError, "unknown frame type 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &ClientChannels{ChannelMax: 8, MaxContent: 1 << 20}
			var err error
			for i, f := range tt.frames {
				if _, err = c.Check(f); err != nil && i != len(tt.frames)-1 {
					t.Fatalf("frame %d: %v", i, err)
				}
			}
			var v *Violation
			if !errors.As(err, &v) || v.Code != tt.code || !strings.Contains(v.Text, tt.text) {
				t.Fatalf("got %v; want %d ...%s...", err, tt.code, tt.text)
			}
		})
	}
}

func TestClientChannelsCloseHandshakes(t *testing.T) {
	var c ClientChannels
	must := func(f Frame, want Step) {
		t.Helper()
		got, err := c.Check(f)
		if err != nil || got.Step != want {
			t.Fatalf("got %v, %v; want step %d", got.Step, err, want)
		}
	}
	// The broker closes channel 1 in the middle of a message: the rest of
	// the message is dropped, the close-ok frees the channel.
	must(on(1, channelOpen), StepChannelOpen)
	must(on(1, publish), StepForward)
	must(on(1, header(2)), StepForward)
	if c.Pending() != 1 {
		t.Fatalf("pending %d, want 1", c.Pending())
	}
	c.PeerClose(1)
	if c.Pending() != 0 {
		t.Fatalf("pending %d after the peer's close, want 0", c.Pending())
	}
	must(on(1, body("xy")), StepDrop)
	must(on(1, publish), StepDrop)
	must(on(1, channelCloseOk), StepChannelCloseOk)
	if c.Phase(1) != ChannelFree {
		t.Fatalf("phase %d after close-ok, want free", c.Phase(1))
	}
	// The client closes channel 2: it stays closing until the broker's close-ok.
	must(on(2, channelOpen), StepChannelOpen)
	must(on(2, channelClose), StepChannelClose)
	must(on(2, publish), StepDrop)
	c.PeerCloseOk(2)
	must(on(2, channelOpen), StepChannelOpen)
	// A whole message ends content.
	must(on(2, publish), StepForward)
	must(on(2, header(3)), StepForward)
	must(on(2, body("ab")), StepForward)
	got, _ := c.Check(on(2, body("c")))
	if !got.EndsContent || c.Pending() != 0 {
		t.Fatalf("the last body frame: EndsContent %v, pending %d", got.EndsContent, c.Pending())
	}
	got, _ = c.Check(on(2, publish))
	if got.EndsContent {
		t.Fatal("publish ends content")
	}
	if got, _ = c.Check(on(2, header(0))); !got.EndsContent {
		t.Fatal("an empty message's header does not end it")
	}
}

func TestClientChannelsRefuseOtherProtocols(t *testing.T) {
	for name, b := range otherProtocols {
		var c ClientChannels
		f, _, err := ParseFrame(append(b, make([]byte, 64)...), 1<<20)
		if err != nil {
			continue // not even a frame: the frame reader refuses it
		}
		if _, err := c.Check(f); err == nil {
			t.Errorf("%s: accepted as a client frame", name)
		}
	}
}
