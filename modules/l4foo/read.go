package l4foo

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// readBufferSize is the size of the buffers reads borrow. 32 KiB measured
// best with many busy connections (16 KiB, 256 KiB and buffers that grow
// and shrink were slower or less steady; BENCHMARKS.md).
const readBufferSize = 32 << 10

var readBuffers = sync.Pool{New: func() any { b := make([]byte, readBufferSize); return &b }}

// socketReader reads one direction of a proxied connection. On a plain TCP
// socket it borrows a buffer from a shared pool only once the socket is
// readable, and the caller hands it back (Release) when the bytes are
// forwarded: a connection waiting for bytes holds no read buffer. On any
// other connection (TLS, a wrapper) it reads as usual into a borrowed
// buffer, held while the read blocks.
type socketReader struct {
	conn  net.Conn
	raw   syscall.RawConn // nil unless conn is a *net.TCPConn
	buf   *[]byte         // borrowed: holds what the last Read returned
	first []byte          // returned by the first Read, before conn is read
}

// newSocketReader reads c, after first: bytes already taken from c (layer4
// reads a client's first bytes while matching).
func newSocketReader(c net.Conn, first []byte) *socketReader {
	r := &socketReader{conn: c, first: first}
	if tc, ok := c.(*net.TCPConn); ok {
		if raw, err := tc.SyscallConn(); err == nil {
			r.raw = raw
		}
	}
	return r
}

// Read returns the next bytes from the connection, valid until Release or
// the next Read; at the end of the stream it returns io.EOF. Deadlines set
// on the connection apply.
func (r *socketReader) Read() ([]byte, error) {
	r.Release()
	if b := r.first; len(b) > 0 {
		r.first = nil
		return b, nil
	}
	if r.raw == nil {
		r.buf = readBuffers.Get().(*[]byte)
		n, err := r.conn.Read(*r.buf)
		if n == 0 {
			r.Release()
			return nil, err
		}
		return (*r.buf)[:n], err
	}
	var n int
	var rerr error
	err := r.raw.Read(func(fd uintptr) bool {
		r.buf = readBuffers.Get().(*[]byte)
		for {
			n, rerr = syscall.Read(int(fd), *r.buf)
			if rerr != syscall.EINTR {
				break
			}
		}
		if rerr == syscall.EAGAIN {
			r.Release()
			return false // wait until readable, then call again
		}
		return true
	})
	if err == nil && rerr == nil && n > 0 {
		return (*r.buf)[:n], nil
	}
	r.Release()
	switch {
	case err != nil:
		return nil, err
	case rerr != nil:
		return nil, &net.OpError{Op: "read", Net: "tcp", Source: r.conn.LocalAddr(),
			Addr: r.conn.RemoteAddr(), Err: os.NewSyscallError("read", rerr)}
	}
	return nil, io.EOF
}

// Release hands the buffer of the last Read back to the pool.
func (r *socketReader) Release() {
	if r.buf != nil {
		readBuffers.Put(r.buf)
		r.buf = nil
	}
}
