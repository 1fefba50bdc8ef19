package relay

import (
	"io"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// rawIO reads and writes a TCP connection's non-blocking socket with raw
// system calls, and waits for it on Go's poller as the connection itself
// does, deadlines included. A read or write that cannot block need not
// tell the scheduler it is in a system call; when it does (net.Conn's own
// Read and Write), the first one after the process was idle wakes the
// runtime's monitor thread, which costs a futex wake and two context
// switches per exchange of a handshake (BENCHMARKS.md, "connection setup").
type rawIO struct {
	rc syscall.RawConn
}

// RawIO returns c's socket as a reader and writer by raw system calls when
// c is a *net.TCPConn, and c itself otherwise (TLS, pipes, wrappers).
// Deadlines are set on c.
func RawIO(c net.Conn) io.ReadWriter {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &rawIO{rc: rc}
}

// Read reads what the socket holds, waiting until it holds something.
func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	if werr := r.rc.Read(func(fd uintptr) bool {
		n, err = retryEINTR(rawRead, int(fd), p)
		return err != unix.EAGAIN
	}); werr != nil {
		return 0, werr // a deadline, or the connection was closed
	}
	switch {
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// Write writes all of p, waiting while the socket's send buffer is full.
func (r *rawIO) Write(p []byte) (int, error) {
	var written int
	var err error
	if werr := r.rc.Write(func(fd uintptr) bool {
		for written < len(p) {
			var n int
			if n, err = retryEINTR(rawWrite, int(fd), p[written:]); err != nil {
				return err != unix.EAGAIN
			}
			written += n
		}
		return true
	}); werr != nil {
		return written, werr
	}
	return written, err
}

func retryEINTR(op func(int, []byte) (int, error), fd int, b []byte) (int, error) {
	for {
		n, err := op(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}
