package amqp

import "encoding/binary"

// FrameHeaderLen is the size of a frame header: type, channel, size.
const FrameHeaderLen = frameHeaderLen

// FrameTracker follows frame boundaries in a stream of AMQP frames without
// holding the frames: fed the bytes as they pass, it knows whether the
// stream is between two frames, how many bytes complete the current one,
// and whether the last complete frame was a Connection.Close or Close-Ok on
// channel 0 (spec 2.3.5: type, channel, size, payload, frame-end).
type FrameTracker struct {
	head    [frameHeaderLen + 4]byte // frame header, then class and method ids
	have    int                      // bytes of head collected for the current frame
	rem     uint64                   // payload and frame-end bytes left, once the header is in
	Frames  uint64                   // complete frames seen
	closing uint16                   // method id of the last complete connection.close(-ok), or 0
}

// Feed advances the tracker over b.
func (t *FrameTracker) Feed(b []byte) {
	for len(b) > 0 {
		if t.have < frameHeaderLen {
			k := copy(t.head[t.have:frameHeaderLen], b)
			t.have += k
			b = b[k:]
			if t.have == frameHeaderLen {
				t.rem = uint64(binary.BigEndian.Uint32(t.head[3:7])) + 1
			}
			continue
		}
		if t.have < len(t.head) {
			// Keep the first four payload bytes: class and method ids.
			want := min(len(t.head)-t.have, int(min(t.rem, uint64(len(b)))))
			copy(t.head[t.have:], b[:want])
			t.have += want
		}
		k := min(t.rem, uint64(len(b)))
		t.rem -= k
		b = b[k:]
		if t.rem == 0 {
			t.complete()
		}
	}
}

// Skip advances the tracker over n payload bytes that were not seen (copied
// by the kernel). n must not exceed Remaining.
func (t *FrameTracker) Skip(n uint64) {
	if t.have < frameHeaderLen || n == 0 {
		return
	}
	t.have = len(t.head) // ids not seen: the frame is not taken for a close
	t.head[frameHeaderLen] = 0
	t.rem -= min(n, t.rem)
	if t.rem == 0 {
		t.complete()
	}
}

func (t *FrameTracker) complete() {
	t.Frames++
	t.closing = 0
	h := t.head
	if h[0] == FrameMethod && h[1] == 0 && h[2] == 0 && t.have == len(h) &&
		binary.BigEndian.Uint16(h[7:9]) == ClassConnection {
		if id := binary.BigEndian.Uint16(h[9:11]); id == MethodClose || id == MethodCloseOk {
			t.closing = id
		}
	}
	t.have, t.rem = 0, 0
}

// AtBoundary reports whether the bytes fed so far end exactly at the end of
// a frame.
func (t *FrameTracker) AtBoundary() bool { return t.have == 0 }

// Remaining returns how many payload and frame-end bytes complete the
// current frame, once its header is in; ok is false while the header is
// still incomplete (or at a boundary).
func (t *FrameTracker) Remaining() (n uint64, ok bool) {
	return t.rem, t.have >= frameHeaderLen
}

// HeaderMissing returns how many bytes of the current frame's header are
// still to come (0 at a boundary or once the header is in).
func (t *FrameTracker) HeaderMissing() int {
	if t.have == 0 || t.have >= frameHeaderLen {
		return 0
	}
	return frameHeaderLen - t.have
}

// LastClose returns MethodClose or MethodCloseOk when the last complete
// frame was that connection method on channel 0, else 0.
func (t *FrameTracker) LastClose() uint16 { return t.closing }
