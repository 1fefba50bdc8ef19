package relay

import (
	"io"
	"sync"
)

// Buffer sizes of CopyAdaptive: every copy owns a small buffer; a copy
// whose reads keep filling it borrows a large one from a shared pool while
// the burst lasts, so that idle sessions cost little memory and busy ones
// move a lot per system call.
const (
	smallBuffer = 16 << 10
	largeBuffer = 1 << 20
)

var largeBuffers = sync.Pool{New: func() any { b := make([]byte, largeBuffer); return &b }}

// CopyAdaptive copies src to dst through user space, calling seen (if not
// nil) with each chunk before it is written. It returns the bytes written
// and nil at src's EOF. Measured faster than splice(2) on loopback for bulk
// streams (BENCHMARKS.md), and it lets the caller see every byte.
func CopyAdaptive(dst io.Writer, src io.Reader, seen func([]byte)) (int64, error) {
	small := make([]byte, smallBuffer)
	var large *[]byte
	defer func() {
		if large != nil {
			largeBuffers.Put(large)
		}
	}()
	var n int64
	for {
		buf := small
		if large != nil {
			buf = *large
		}
		m, err := src.Read(buf)
		if m > 0 {
			if seen != nil {
				seen(buf[:m])
			}
			w, werr := dst.Write(buf[:m])
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
		case large == nil && m == len(small):
			large = largeBuffers.Get().(*[]byte)
		case large != nil && m < len(*large)/16:
			largeBuffers.Put(large)
			large = nil
		}
	}
}
