package amqp

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// frameStreams are real captures, frames only (no protocol header).
func frameStreams(t testing.TB) map[string][]byte {
	out := map[string][]byte{}
	for name, h := range loadCaptures(t) {
		out[name+"-client"] = h.client[HeaderLen:]
		out[name+"-server"] = h.server
	}
	client, broker := loadSession(t)
	out["session-client"], out["session-broker"] = client[HeaderLen:], broker
	return out
}

// parsedFrames is the stream cut by ParseFrame, and the bytes left over.
func parsedFrames(b []byte, maxSize uint32) ([]Frame, []byte, error) {
	var out []Frame
	for len(b) > 0 {
		f, n, err := ParseFrame(b, maxSize)
		if err != nil {
			return out, b, err
		}
		out = append(out, f)
		b = b[n:]
	}
	return out, nil, nil
}

// chunked reads at most n bytes a call, as a socket would deliver them.
type chunked struct {
	r io.Reader
	n int
}

func (c *chunked) Read(p []byte) (int, error) { return c.r.Read(p[:min(len(p), c.n)]) }

// TestFrameReaderMatchesParseFrame: however the bytes arrive, FrameReader
// yields the frames ParseFrame finds, then io.EOF.
func TestFrameReaderMatchesParseFrame(t *testing.T) {
	for name, stream := range frameStreams(t) {
		want, _, err := parsedFrames(stream, 1<<20)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, chunk := range []int{1, 3, 7, 8, 100, 4096, len(stream)} {
			fr := NewFrameReader(&chunked{bytes.NewReader(stream), chunk})
			for i, w := range want {
				got, err := fr.ReadFrame(1 << 20)
				if err != nil || got.Type != w.Type || got.Channel != w.Channel || !bytes.Equal(got.Payload, w.Payload) {
					t.Fatalf("%s, %d-byte reads, frame %d: %+v, %v; want %+v", name, chunk, i, got, err, w)
				}
			}
			if _, err := fr.ReadFrame(1 << 20); err != io.EOF {
				t.Fatalf("%s, %d-byte reads: after the last frame: %v, want io.EOF", name, chunk, err)
			}
		}
	}
}

// TestFrameReaderTruncated: every prefix of a real capture gives the
// frames it holds whole, then io.EOF at a frame boundary and
// io.ErrUnexpectedEOF inside a frame.
func TestFrameReaderTruncated(t *testing.T) {
	for name, stream := range frameStreams(t) {
		for i := 0; i <= len(stream); i++ {
			want, rest, _ := parsedFrames(stream[:i], 1<<20)
			fr := NewFrameReader(iotest.HalfReader(bytes.NewReader(stream[:i])))
			for range want {
				if _, err := fr.ReadFrame(1 << 20); err != nil {
					t.Fatalf("%s[:%d]: %v", name, i, err)
				}
			}
			wantErr := io.EOF
			if len(rest) > 0 {
				wantErr = io.ErrUnexpectedEOF
			}
			if _, err := fr.ReadFrame(1 << 20); err != wantErr {
				t.Fatalf("%s[:%d]: %v, want %v", name, i, err, wantErr)
			}
		}
	}
}

// TestFrameReaderBufferedLosesNothing: after any number of frames, the
// frames read, Buffered and what is still unread make up the stream.
func TestFrameReaderBufferedLosesNothing(t *testing.T) {
	for name, stream := range frameStreams(t) {
		want, _, _ := parsedFrames(stream, 1<<20)
		for k := 0; k <= len(want); k++ {
			r := bytes.NewReader(stream)
			fr := NewFrameReader(&chunked{r, 300})
			var got []byte
			for range k {
				f, err := fr.ReadFrame(1 << 20)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got = AppendFrame(got, f)
			}
			got = append(got, fr.Buffered()...)
			unread, _ := io.ReadAll(r)
			if got = append(got, unread...); !bytes.Equal(got, stream) {
				t.Fatalf("%s after %d frames: the bytes do not add up to the stream", name, k)
			}
		}
	}
}

// TestFrameReaderPayloadIsOwned: a payload stays intact while later frames
// are read into the buffer.
func TestFrameReaderPayloadIsOwned(t *testing.T) {
	var stream []byte
	for i := range 50 {
		stream = AppendFrame(stream, Frame{Type: FrameBody, Channel: 1, Payload: bytes.Repeat([]byte{byte(i)}, 100)})
	}
	fr := NewFrameReader(&chunked{bytes.NewReader(stream), 250})
	first, err := fr.ReadFrame(FrameMinSize)
	if err != nil {
		t.Fatal(err)
	}
	for range 49 {
		if _, err := fr.ReadFrame(FrameMinSize); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(first.Payload, bytes.Repeat([]byte{0}, 100)) {
		t.Fatal("the first payload changed as later frames were read")
	}
}

// TestFrameReaderLimits: an oversized frame is refused from its header,
// before its payload is read or a buffer for it allocated; the other
// protocols' first bytes are malformed frames.
func TestFrameReaderLimits(t *testing.T) {
	hdr := []byte{FrameMethod, 0, 0, 0x7f, 0xff, 0xff, 0xff}
	fr := NewFrameReader(iotest.OneByteReader(bytes.NewReader(hdr)))
	if _, err := fr.ReadFrame(FrameMinSize); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("2 GiB frame: %v, want ErrFrameTooLarge", err)
	}
	if len(fr.buf) > frameReaderSize {
		t.Fatalf("the buffer grew to %d bytes for a refused frame", len(fr.buf))
	}
	for name, b := range otherProtocols {
		if name == "amqp-0-9" || name == "amqp-0-8" {
			continue // protocol headers, not frames: ParseHeader refuses them
		}
		if _, err := NewFrameReader(bytes.NewReader(b)).ReadFrame(FrameMinSize); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// FuzzFrameReader: on any input, read in chunks of any size, FrameReader
// agrees with ParseFrame and loses no byte.
func FuzzFrameReader(f *testing.F) {
	addCaptureSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		chunk := 1
		if len(b) > 0 {
			chunk = int(b[0]) + 1
		}
		want, rest, perr := parsedFrames(b, FrameMinSize)
		fr := NewFrameReader(&chunked{bytes.NewReader(b), chunk})
		var got []byte
		for i := range want {
			f, err := fr.ReadFrame(FrameMinSize)
			if err != nil {
				t.Fatalf("frame %d: %v", i, err)
			}
			got = AppendFrame(got, f)
		}
		_, err := fr.ReadFrame(FrameMinSize)
		switch {
		case perr == nil && err != io.EOF:
			t.Fatalf("after the last frame: %v", err)
		case perr != nil && !errors.Is(perr, ErrNeedMore) && errorKind(err) != errorKind(perr):
			t.Fatalf("ParseFrame failed with %v, FrameReader with %v", perr, err)
		case errors.Is(perr, ErrNeedMore) && err != io.ErrUnexpectedEOF:
			t.Fatalf("truncated frame: %v", err)
		}
		if len(rest) == 0 && !bytes.Equal(got, b) {
			t.Fatal("frames do not re-encode to the input")
		}
	})
}

func errorKind(err error) error {
	for _, kind := range []error{ErrMalformed, ErrFrameTooLarge, ErrNeedMore} {
		if errors.Is(err, kind) {
			return kind
		}
	}
	return err
}

func TestFrameReaderNextAndReady(t *testing.T) {
	var stream []byte
	for i := range 50 {
		stream = AppendFrame(stream, Frame{Type: FrameBody, Channel: uint16(i), Payload: []byte("0123456789")})
	}
	fr := NewFrameReader(bytes.NewReader(stream))
	fr.Reserve(1 << 12)
	if fr.Ready(1 << 12) {
		t.Fatal("Ready before any read")
	}
	for i := range 50 {
		f, err := fr.Next(1 << 12)
		if err != nil || f.Channel != uint16(i) || string(f.Payload) != "0123456789" {
			t.Fatalf("frame %d: %+v, %v", i, f, err)
		}
		if want := AppendFrame(nil, f); !bytes.Equal(fr.LastFrame(), want) {
			t.Fatalf("frame %d: LastFrame %x, want %x", i, fr.LastFrame(), want)
		}
		if i < 49 && !fr.Ready(1<<12) {
			t.Fatalf("frame %d: the rest was read in one go but Ready is false", i)
		}
	}
	if _, err := fr.Next(1 << 12); err != io.EOF {
		t.Fatalf("after the last frame: %v, want EOF", err)
	}
	// Every truncated prefix ends in ErrUnexpectedEOF or EOF, never a panic.
	for n := range len(stream) {
		fr := NewFrameReader(bytes.NewReader(stream[:n]))
		for {
			if _, err := fr.Next(1 << 12); err != nil {
				if err != io.EOF && err != io.ErrUnexpectedEOF {
					t.Fatalf("prefix %d: %v", n, err)
				}
				break
			}
		}
	}
}
