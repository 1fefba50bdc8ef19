package amqp

import (
	"errors"
	"io"
)

// FrameReader reads frames through a buffer, so that one read brings
// whatever the peer has sent (a frame's header and payload, or Tune-Ok and
// Open together) instead of one read for the header and one for the rest.
// It may read past the last frame returned: Buffered holds those bytes,
// which belong to the data path after the handshake.
//
// The buffer starts at frameReaderSize and grows to hold the frame being
// read, never past its maxSize.
type FrameReader struct {
	r          io.Reader
	buf        []byte
	start, end int // buf[start:end] is read but not yet returned
	last       int // bytes of the frame Next returned last
}

// frameReaderSize holds a handshake frame in one read (RabbitMQ's Start is
// about 500 bytes, amqp091-go's Start-Ok about 170); a larger frame grows
// the buffer.
const frameReaderSize = 1024

// NewFrameReader returns a FrameReader reading from r.
func NewFrameReader(r io.Reader) *FrameReader { return &FrameReader{r: r} }

// ReadFrame returns the next frame. The payload is the caller's own: it
// does not alias the buffer. maxSize bounds the frame as in ParseFrame.
// A stream that ends inside a frame gives io.ErrUnexpectedEOF; one that
// ends between frames gives io.EOF.
func (fr *FrameReader) ReadFrame(maxSize uint32) (Frame, error) {
	f, err := fr.Next(maxSize)
	if err == nil {
		f.Payload = append([]byte(nil), f.Payload...)
	}
	return f, err
}

// Next is ReadFrame without the copy: the payload aliases the reader's
// buffer and is valid only until the next call. For data paths that
// handle each frame before reading the next.
func (fr *FrameReader) Next(maxSize uint32) (Frame, error) {
	for {
		f, n, err := ParseFrame(fr.buf[fr.start:fr.end], maxSize)
		if err == nil {
			fr.start += n
			fr.last = n
			return f, nil
		}
		if !errors.Is(err, ErrNeedMore) {
			return Frame{}, err
		}
		if err := fr.fill(fr.need(maxSize)); err != nil {
			if errors.Is(err, io.EOF) && fr.start < fr.end {
				err = io.ErrUnexpectedEOF
			}
			return Frame{}, err
		}
	}
}

// LastFrame returns the bytes of the frame Next returned last, as they
// arrived (header, payload, frame-end), valid until the next call.
func (fr *FrameReader) LastFrame() []byte { return fr.buf[fr.start-fr.last : fr.start] }

// Ready reports whether the next frame (or a malformed one) is buffered
// whole, so that ReadFrame or Next returns without reading.
func (fr *FrameReader) Ready(maxSize uint32) bool {
	_, _, err := ParseFrame(fr.buf[fr.start:fr.end], maxSize)
	return !errors.Is(err, ErrNeedMore)
}

// Reserve grows the buffer to at least n bytes, so that one read can bring
// many small frames; buffered bytes are kept.
func (fr *FrameReader) Reserve(n int) {
	if len(fr.buf) >= n {
		return
	}
	grown := make([]byte, n)
	fr.end = copy(grown, fr.buf[fr.start:fr.end])
	fr.start = 0
	fr.buf = grown
}

// need is how many bytes the frame at buf[start:] spans, as far as its
// header tells (at least a header's worth, at most maxSize).
func (fr *FrameReader) need(maxSize uint32) int {
	b := fr.buf[fr.start:fr.end]
	if len(b) < frameHeaderLen {
		return frameHeaderLen
	}
	_, _, size, err := parseFrameHeader(b, maxSize)
	if err != nil { // ParseFrame has already rejected it
		return frameHeaderLen
	}
	return frameHeaderLen + int(size) + 1
}

// fill reads once, after making room for a frame of need bytes.
func (fr *FrameReader) fill(need int) error {
	if fr.start == fr.end {
		fr.start, fr.end = 0, 0
	}
	if len(fr.buf)-fr.start < need {
		size := max(need, frameReaderSize)
		if size > len(fr.buf) {
			grown := make([]byte, size)
			fr.end = copy(grown, fr.buf[fr.start:fr.end])
			fr.buf = grown
		} else {
			fr.end = copy(fr.buf, fr.buf[fr.start:fr.end])
		}
		fr.start = 0
	}
	n, err := fr.r.Read(fr.buf[fr.end:])
	fr.end += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Buffered returns the bytes read past the last frame returned, and
// forgets them.
func (fr *FrameReader) Buffered() []byte {
	b := fr.buf[fr.start:fr.end]
	fr.start, fr.end = 0, 0
	fr.buf = nil
	return b
}
