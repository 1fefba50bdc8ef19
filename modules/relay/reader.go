package relay

import (
	"io"
	"net"
	"os"
	"syscall"
)

// Reader reads one direction of a relayed connection into buffers it
// borrows from a pool. On a plain TCP socket it borrows a buffer only once
// the socket is readable, and the caller gives it back (Release, or the
// next Read) once the bytes are forwarded: a connection waiting for bytes
// holds no buffer. Any other reader (TLS, a wrapper) is read as usual into
// a borrowed buffer, held while the read blocks.
type Reader struct {
	src   io.Reader
	raw   syscall.RawConn // nil unless src is a *net.TCPConn
	tcp   *net.TCPConn
	buf   *[]byte  // borrowed: holds what the last Read returned
	from  *Buffers // where buf came from
	first []byte   // returned by the first Read, before src is read
	max   int      // if > 0, a Read returns at most max bytes

	// The raw read: readFD is r.readSocket, bound once (a closure made
	// per Read would be allocated per Read); it borrows from want and
	// leaves the read(2) result in n and errno.
	readFD func(fd uintptr) bool
	want   *Buffers
	n      int
	errno  error
}

// NewReader reads src, after first: bytes already taken from it (layer4
// reads a client's first bytes while matching).
func NewReader(src io.Reader, first []byte) *Reader {
	r := &Reader{src: src, first: first}
	if tc, ok := src.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			r.raw, r.tcp = raw, tc
			r.readFD = r.readSocket
		}
	}
	return r
}

// WaitsUnbuffered reports whether r waits for bytes without holding a
// buffer: it reads a TCP socket directly. Otherwise a Read blocks holding
// the buffer it borrowed.
func (r *Reader) WaitsUnbuffered() bool { return r.raw != nil }

// Limit makes each Read return at most n bytes (n > 0), for a caller that
// paces what it forwards.
func (r *Reader) Limit(n int) { r.max = n }

// Read returns the next bytes, read into a buffer borrowed from buffers,
// valid until Release or the next Read. At the end of the stream
// it returns io.EOF. Deadlines set on the connection apply.
func (r *Reader) Read(buffers *Buffers) ([]byte, error) {
	r.Release()
	if b := r.first; len(b) > 0 {
		if r.max > 0 && len(b) > r.max {
			b = b[:r.max]
		}
		r.first = r.first[len(b):]
		return b, nil
	}
	if r.raw == nil {
		r.borrow(buffers)
		n, err := r.src.Read(r.space())
		if n == 0 {
			r.Release()
			return nil, err
		}
		return (*r.buf)[:n], err
	}
	r.want = buffers
	err := r.raw.Read(r.readFD)
	if err == nil && r.errno == nil && r.n > 0 {
		return (*r.buf)[:r.n], nil
	}
	r.Release()
	switch {
	case err != nil:
		return nil, err
	case r.errno != nil:
		return nil, &net.OpError{Op: "read", Net: "tcp", Source: r.tcp.LocalAddr(),
			Addr: r.tcp.RemoteAddr(), Err: os.NewSyscallError("read", r.errno)}
	}
	return nil, io.EOF
}

// readSocket reads the socket fd into a buffer borrowed from r.want, or
// gives the buffer back and returns false (wait until readable) if there
// is nothing to read.
func (r *Reader) readSocket(fd uintptr) bool {
	r.borrow(r.want)
	for {
		r.n, r.errno = syscall.Read(int(fd), r.space())
		if r.errno != syscall.EINTR {
			break
		}
	}
	if r.errno == syscall.EAGAIN {
		r.Release()
		return false
	}
	return true
}

// space is the borrowed buffer as far as a read may fill it.
func (r *Reader) space() []byte {
	if b := *r.buf; r.max > 0 && r.max < len(b) {
		return b[:r.max]
	}
	return *r.buf
}

func (r *Reader) borrow(buffers *Buffers) {
	r.buf, r.from = buffers.get()
}

// Release gives the buffer of the last Read back to its pool.
func (r *Reader) Release() {
	if r.buf != nil {
		r.from.put(r.buf)
		r.buf, r.from = nil, nil
	}
}
