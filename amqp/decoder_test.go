package amqp

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// decoded is what a test keeps of a frame: a line naming it.
func describe(f *FrameInfo) string {
	if f.Err != nil {
		return fmt.Sprintf("@%d malformed", f.Offset)
	}
	switch f.Type {
	case FrameMethod:
		return fmt.Sprintf("@%d ch%d %s", f.Offset, f.Channel, FullMethodName(f.Class, f.Method))
	case FrameHeader:
		size, _ := ContentBodySize(f.Payload)
		return fmt.Sprintf("@%d ch%d header %d", f.Offset, f.Channel, size)
	case FrameBody:
		return fmt.Sprintf("@%d ch%d body %d %q", f.Offset, f.Channel, f.Size, f.Payload)
	}
	return fmt.Sprintf("@%d heartbeat", f.Offset)
}

// feedAll decodes b split at the given offsets and returns the frames.
func feedAll(dir Dir, b []byte, keepBody int, splits ...int) []string {
	var got []string
	d := &Decoder{Dir: dir, KeepBody: keepBody, Emit: func(f *FrameInfo) { got = append(got, describe(f)) }}
	prev := 0
	for _, s := range append(splits, len(b)) {
		d.Feed(b[prev:s])
		prev = s
	}
	return got
}

func sessionStreams(t testing.TB) map[Dir][]byte {
	client, broker := loadSession(t)
	return map[Dir][]byte{FromClient: client[HeaderLen:], FromBroker: broker}
}

func TestDecoderReadsARealSession(t *testing.T) {
	s := sessionStreams(t)
	client := strings.Join(feedAll(FromClient, s[FromClient], -1), "\n")
	broker := strings.Join(feedAll(FromBroker, s[FromBroker], -1), "\n")
	for _, want := range []string{"connection.start-ok", "connection.open", "exchange.declare", "queue.declare",
		"queue.bind", "confirm.select", "basic.publish", `body 3 "one"`, "basic.consume", "basic.ack",
		"basic.nack", "basic.reject", "tx.select", "tx.commit", "channel.close", "connection.close"} {
		if !strings.Contains(client, want) {
			t.Errorf("client side lacks %s:\n%s", want, client)
		}
	}
	for _, want := range []string{"connection.start", "connection.tune", "connection.open-ok", "queue.declare-ok",
		"confirm.select-ok", "basic.ack", "basic.return", "basic.deliver", `body 3 "two"`, "tx.commit-ok",
		"channel.close-ok", "connection.close-ok"} {
		if !strings.Contains(broker, want) {
			t.Errorf("broker side lacks %s:\n%s", want, broker)
		}
	}
	if strings.Contains(client+broker, "malformed") {
		t.Errorf("a real session decoded as malformed")
	}
}

// Every split point gives the same frames as one Feed, and every truncated
// prefix gives exactly the frames it wholly contains.
func TestDecoderSplitsAndPrefixes(t *testing.T) {
	for dir, b := range sessionStreams(t) {
		whole := feedAll(dir, b, -1)
		bytewise := make([]int, len(b))
		for i := range bytewise {
			bytewise[i] = i
		}
		if got := feedAll(dir, b, -1, bytewise...); !reflect.DeepEqual(got, whole) {
			t.Fatalf("%s: byte at a time differs", dir)
		}
		for i := range len(b) {
			if got := feedAll(dir, b, -1, i); !reflect.DeepEqual(got, whole) {
				t.Fatalf("%s: split at %d differs:\n%v\nwant\n%v", dir, i, got, whole)
			}
			prefix := feedAll(dir, b[:i], -1)
			if len(prefix) > len(whole) || (len(prefix) > 0 && !reflect.DeepEqual(prefix, whole[:len(prefix)])) {
				t.Fatalf("%s: prefix %d gives frames the whole stream does not", dir, i)
			}
		}
	}
}

func TestDecoderKeepsBodiesAsAsked(t *testing.T) {
	b := sessionStreams(t)[FromClient]
	none := strings.Join(feedAll(FromClient, b, 0), "\n")
	if !strings.Contains(none, `body 3 ""`) {
		t.Errorf("KeepBody 0 kept bytes:\n%s", none)
	}
	two := strings.Join(feedAll(FromClient, b, 2), "\n")
	if !strings.Contains(two, `body 3 "on"`) || !strings.Contains(two, `body 5 "th"`) {
		t.Errorf("KeepBody 2:\n%s", two)
	}
}

func TestDecoderMalformed(t *testing.T) {
	good := AppendFrame(nil, Frame{Type: FrameHeartbeat})
	badEnd := append(AppendFrame(nil, Frame{Type: FrameMethod, Payload: []byte{0, 60, 0, 80}}), 0)
	badEnd[len(badEnd)-2] = 0
	short := AppendFrame(nil, Frame{Type: FrameMethod, Channel: 1, Payload: []byte{0, 60}})
	for name, tc := range map[string]struct {
		in     []byte
		frames int
		offset int64
	}{
		"bad frame-end":      {append(append([]byte{}, good...), badEnd...), 2, int64(len(good))},
		"method without ids": {short, 1, 0},
		"unknown type":       {append(append([]byte{}, good...), 9, 0, 0, 0, 0, 0, 0), 2, int64(len(good))},
	} {
		var got []*FrameInfo
		d := &Decoder{Emit: func(f *FrameInfo) { c := *f; got = append(got, &c) }}
		d.Feed(tc.in)
		d.Feed(good) // nothing more after a malformed frame
		if len(got) != tc.frames || !errors.Is(got[len(got)-1].Err, ErrMalformed) || got[len(got)-1].Offset != tc.offset {
			t.Errorf("%s: got %d frames, last %+v", name, len(got), got[len(got)-1])
		}
		if !d.Broken() || d.Offset() != int64(len(tc.in)+len(good)) {
			t.Errorf("%s: broken %v offset %d", name, d.Broken(), d.Offset())
		}
	}
	for name, b := range otherProtocols {
		var bad int
		d := &Decoder{Emit: func(f *FrameInfo) {
			if f.Err != nil {
				bad++
			}
		}}
		d.Feed(b)
		if name != "amqp-0-9" && name != "amqp-0-8" && bad != 1 && !d.Broken() {
			t.Errorf("%s decoded as AMQP frames", name)
		}
	}
}

// A session nobody watches in detail pays no allocation per frame.
func TestDecoderDoesNotAllocate(t *testing.T) {
	s := sessionStreams(t)
	for dir, b := range s {
		d := &Decoder{Dir: dir, KeepBody: -1, Emit: func(*FrameInfo) {}}
		d.Feed(b)
		allocs := testing.AllocsPerRun(20, func() {
			for i := 0; i < len(b); i += 100 {
				d.Feed(b[i:min(i+100, len(b))])
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocations per pass over the session", dir, allocs)
		}
	}
	o := NewObserver(nil)
	dec := map[Dir]*Decoder{}
	for _, dir := range []Dir{FromClient, FromBroker} {
		dec[dir] = &Decoder{Dir: dir, Emit: o.Observe}
		dec[dir].Feed(s[dir])
	}
	// Counting a stream of publishes on a channel already open allocates nothing.
	pub := publishFrames(1, 16)
	allocs := testing.AllocsPerRun(100, func() { dec[FromClient].Feed(pub) })
	if allocs != 0 {
		t.Errorf("observer: %v allocations per publish", allocs)
	}
}

// publishFrames is one Basic.Publish of a size-byte body on ch.
func publishFrames(ch uint16, size int) []byte {
	b, _ := AppendMethodFrame(nil, ch, &OtherMethod{Class: ClassBasic, Method: MethodBasicPublish, Args: []byte{0, 0, 0, 2, 'r', 'k', 0}})
	hdr := []byte{0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(size), 0, 0}
	b = AppendFrame(b, Frame{Type: FrameHeader, Channel: ch, Payload: hdr})
	return AppendFrame(b, Frame{Type: FrameBody, Channel: ch, Payload: make([]byte, size)})
}

func TestObserverCountsARealSession(t *testing.T) {
	o := NewObserver(nil)
	s := sessionStreams(t)
	// Client side first: its Channel.Opens come before the broker's
	// Close-Oks that drop the channels (a map's order is random).
	for _, dir := range []Dir{FromClient, FromBroker} {
		d := &Decoder{Dir: dir, Emit: o.Observe}
		d.Feed(s[dir])
	}
	got := o.Total.Read()
	want := Counts{Published: 5, PublishedBytes: 3 + 3 + 5 + 4 + 16, Delivered: 4, DeliveredBytes: 3 + 3 + 5 + 16,
		Acked: 2, Nacked: 1, Rejected: 1, Returned: 1, Confirmed: 4}
	if got != want {
		t.Errorf("counts\n got %+v\nwant %+v", got, want)
	}
	opened, closes := o.ChannelStats()
	if opened != 2 || closes[ReplySuccess] != 2 {
		t.Errorf("channels opened %d, closes %v", opened, closes)
	}
	if chs := o.Channels(); len(chs) != 0 {
		t.Errorf("channels still open after the session: %+v", chs)
	}
}

func TestDecodeArgsOfEveryMethodInTheSession(t *testing.T) {
	for dir, b := range sessionStreams(t) {
		d := &Decoder{Dir: dir, KeepBody: -1, Emit: func(f *FrameInfo) {
			switch f.Type {
			case FrameMethod:
				c, m, args, err := DecodeArgs(f.Payload)
				if err != nil || c != f.Class || m != f.Method {
					t.Errorf("%s %s: %v", dir, FullMethodName(f.Class, f.Method), err)
				}
				if FullMethodName(c, m) == "basic.publish" && args.String("exchange") != "prelude.capture" {
					t.Errorf("publish args %v", args)
				}
			case FrameHeader:
				_, _, props, err := ParseContentHeader(f.Payload)
				if err != nil {
					t.Errorf("content header: %v", err)
				}
				if v := props.String("content-type"); v != "" && v != "text/plain" {
					t.Errorf("content-type %q", v)
				}
			}
		}}
		d.Feed(b)
	}
}

// BenchmarkObserve16 is what the always-on statistics cost per 16-byte
// publish on the relay: decoding its three frames and counting them.
func BenchmarkObserve16(b *testing.B) {
	o := NewObserver(nil)
	d := &Decoder{Dir: FromClient, Emit: o.Observe}
	open, _ := AppendMethodFrame(nil, 1, &OtherMethod{Class: ClassChannel, Method: MethodChannelOpen, Args: []byte{0}})
	d.Feed(open)
	pub := publishFrames(1, 16)
	b.SetBytes(int64(len(pub)))
	b.ReportAllocs()
	for b.Loop() {
		d.Feed(pub)
	}
}

// BenchmarkTrack16 is the frame tracking every relayed session already
// paid per 16-byte publish, for comparison.
func BenchmarkTrack16(b *testing.B) {
	var tr FrameTracker
	pub := publishFrames(1, 16)
	b.SetBytes(int64(len(pub)))
	b.ReportAllocs()
	for b.Loop() {
		tr.Feed(pub)
	}
}

// Every method of the real session re-encodes to its own bytes.
func TestEncodeArgsRoundTrips(t *testing.T) {
	for dir, b := range sessionStreams(t) {
		d := &Decoder{Dir: dir, Emit: func(f *FrameInfo) {
			if f.Type != FrameMethod {
				return
			}
			c, m, args, err := DecodeArgs(f.Payload)
			if err != nil {
				t.Fatal(err)
			}
			enc, err := EncodeArgs(c, m, args)
			if err != nil || !bytes.Equal(enc, f.Payload) {
				t.Errorf("%s: re-encoded %x, want %x (%v)", FullMethodName(c, m), enc, f.Payload, err)
			}
		}}
		d.Feed(b)
	}
}
