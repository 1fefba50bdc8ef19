// Package readprelude reads a protocol's first message from a connection,
// however the bytes are split across reads.
package readprelude

import (
	"errors"
	"io"
)

// Read reads from r until parse accepts the bytes read so far, and returns
// the value with the bytes read beyond it (to be replayed upstream). parse
// returns the value and how many bytes it spans, needMore while the input is
// a valid prefix, or any other error to stop. The parser bounds the length,
// so the buffer cannot grow without bound.
func Read[T any](r io.Reader, parse func([]byte) (T, int, error), needMore error) (T, []byte, error) {
	buf := make([]byte, 0, 512)
	for {
		v, n, err := parse(buf)
		if err == nil {
			return v, buf[n:], nil
		}
		if !errors.Is(err, needMore) {
			var zero T
			return zero, nil, err
		}
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, len(buf))...)[:len(buf)]
		}
		k, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil && k == 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			var zero T
			return zero, nil, err
		}
	}
}
