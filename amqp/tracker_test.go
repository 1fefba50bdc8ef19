package amqp

import (
	"bytes"
	"testing"
)

// trackerStream is a broker-to-client tail: a heartbeat, a large body
// frame, a method on channel 1 and the Close-Ok that ends a session.
func trackerStream(t *testing.T) ([]byte, []int) {
	t.Helper()
	var b []byte
	var ends []int
	add := func(f []byte) { b = append(b, f...); ends = append(ends, len(b)) }
	add(AppendFrame(nil, Frame{Type: FrameHeartbeat}))
	add(AppendFrame(nil, Frame{Type: FrameBody, Channel: 1, Payload: bytes.Repeat([]byte{0xCE}, 70000)}))
	m, err := AppendMethodFrame(nil, 1, &Close{ReplyCode: 200, ReplyText: "channel-ish"})
	if err != nil {
		t.Fatal(err)
	}
	m[7], m[8] = 0, 20 // class 20 (channel): not a connection close
	add(m)
	ok, err := AppendMethodFrame(nil, 0, &CloseOk{})
	if err != nil {
		t.Fatal(err)
	}
	add(ok)
	return b, ends
}

// TestFrameTrackerEveryPrefix: fed any prefix, the tracker is at a boundary
// exactly at the ends of frames, and knows what completes the frame.
func TestFrameTrackerEveryPrefix(t *testing.T) {
	stream, ends := trackerStream(t)
	isEnd := map[int]bool{0: true}
	for _, e := range ends {
		isEnd[e] = true
	}
	for n := 0; n <= len(stream); n += 1 + n/64 {
		var tr FrameTracker
		tr.Feed(stream[:n])
		if tr.AtBoundary() != isEnd[n] {
			t.Fatalf("prefix %d: at boundary %v, want %v", n, tr.AtBoundary(), isEnd[n])
		}
		if rem, ok := tr.Remaining(); ok {
			next := 0
			for _, e := range ends {
				if e > n {
					next = e
					break
				}
			}
			if n+int(rem) != next {
				t.Fatalf("prefix %d: %d bytes remaining, next frame end at %d", n, rem, next)
			}
		}
	}
}

func TestFrameTrackerSplitsAndClose(t *testing.T) {
	stream, ends := trackerStream(t)
	for _, chunk := range []int{1, 3, 7, 11, 4096, len(stream)} {
		var tr FrameTracker
		for i := 0; i < len(stream); i += chunk {
			tr.Feed(stream[i:min(i+chunk, len(stream))])
		}
		if !tr.AtBoundary() || tr.Frames != uint64(len(ends)) || tr.LastClose() != MethodCloseOk {
			t.Fatalf("chunk %d: boundary %v frames %d lastClose %d", chunk, tr.AtBoundary(), tr.Frames, tr.LastClose())
		}
	}
	// Kernel-copied payload: Skip keeps the count without seeing bytes.
	var tr FrameTracker
	tr.Feed(stream[:ends[0]+7])
	rem, _ := tr.Remaining()
	tr.Skip(rem)
	if !tr.AtBoundary() || tr.Frames != 2 || tr.LastClose() != 0 {
		t.Fatalf("after skip: boundary %v frames %d", tr.AtBoundary(), tr.Frames)
	}
}

func FuzzFrameTracker(f *testing.F) {
	f.Add([]byte{8, 0, 0, 0, 0, 0, 0, 0xCE}, uint8(3))
	f.Add([]byte("AMQP\x00\x00\x09\x01"), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8) {
		var a, c FrameTracker
		a.Feed(b)
		step := int(chunk) + 1
		for i := 0; i < len(b); i += step {
			c.Feed(b[i:min(i+step, len(b))])
		}
		if a.AtBoundary() != c.AtBoundary() || a.Frames != c.Frames {
			t.Fatalf("chunking changed the result: %+v vs %+v", a, c)
		}
	})
}
