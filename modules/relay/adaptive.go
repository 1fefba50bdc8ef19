package relay

import (
	"io"
)

// Buffer sizes of CopyAdaptive: a copy reads into a small buffer; a copy
// whose reads keep filling it reads into a large one while the burst
// lasts, so that busy sessions move a lot per system call. Both are
// borrowed from shared pools only while a read has bytes (Reader), so an
// idle session on TCP sockets holds none. Any other source (TLS, an AMQP
// stream) blocks in its read holding the buffer it was given, so it is
// read into small buffers only: a quiet session holds 16 KiB, never 1 MiB.
// For TLS nothing is lost: a TLS read returns at most one record, 16 KiB.
//
// A buffer is also held while its bytes are written on, which lasts as
// long as the destination is slow to take them (a slow consumer behind a
// fast broker holds its buffer nearly all the time). So at most
// maxLargeLent large buffers are out at once, 64 MiB in all; past that,
// copies read into small ones.
const (
	smallBuffer  = 16 << 10
	largeBuffer  = 1 << 20
	maxLargeLent = 64
)

var (
	smallBuffers = NewBuffers(smallBuffer)
	largeBuffers = NewLimitedBuffers(largeBuffer, maxLargeLent, smallBuffers)
)

// CopyAdaptive copies src to dst through user space, calling seen (if not
// nil) with each chunk before it is written. It returns the bytes written
// and nil at src's EOF. Measured faster than splice(2) on loopback for bulk
// streams (BENCHMARKS.md), and it lets the caller see every byte.
func CopyAdaptive(dst io.Writer, src io.Reader, seen func([]byte)) (int64, error) {
	r := NewReader(src, nil)
	defer r.Release()
	buffers := smallBuffers
	var n int64
	for {
		b, err := r.Read(buffers)
		if len(b) > 0 {
			if seen != nil {
				seen(b)
			}
			w, werr := dst.Write(b)
			n += int64(w)
			if werr != nil {
				return n, werr
			}
		}
		if err != nil {
			if err == io.EOF {
				return n, nil
			}
			return n, err
		}
		switch {
		case buffers == smallBuffers && len(b) == smallBuffer && r.WaitsUnbuffered():
			buffers = largeBuffers
		case buffers == largeBuffers && len(b) < largeBuffer/16:
			buffers = smallBuffers // also when the large ones were all out
		}
	}
}
