package stream

import (
	"errors"
	"net"
	"os"
	"syscall"
)

// Addr is the address of one end of a stream: the queue it receives on.
type Addr struct{ Queue string }

// Network returns "amqp".
func (a Addr) Network() string { return "amqp" }

// String returns the queue name.
func (a Addr) String() string { return a.Queue }

var (
	// ErrRefused: nobody listens on the queue (the connect request came
	// back unroutable). errors.Is(err, syscall.ECONNREFUSED) holds.
	ErrRefused = &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}
	// ErrReset: the peer aborted the stream, or its queue is gone.
	// errors.Is(err, syscall.ECONNRESET) holds.
	ErrReset = &os.SyscallError{Syscall: "amqp stream", Err: syscall.ECONNRESET}
	// ErrPeerTimeout: nothing was heard from the peer within KeepaliveTimeout.
	ErrPeerTimeout = &timeoutError{"amqp stream: peer silent longer than the keepalive timeout"}
	// ErrWriteClosed: Write after CloseWrite.
	ErrWriteClosed = errors.New("amqp stream: write after CloseWrite")

	errDeadline = os.ErrDeadlineExceeded
)

type timeoutError struct{ s string }

func (e *timeoutError) Error() string   { return e.s }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return false }

// brokerError reports that the broker connection or channel carrying a
// stream failed; it wraps ECONNRESET so callers can treat it as a reset.
type brokerError struct{ cause error }

func (e *brokerError) Error() string {
	return "amqp stream: broker connection lost: " + e.cause.Error()
}
func (e *brokerError) Unwrap() []error { return []error{e.cause, syscall.ECONNRESET} }

func opError(op string, c *Conn, err error) error {
	if err == nil {
		return nil
	}
	return &net.OpError{Op: op, Net: "amqp", Source: c.local, Addr: c.remote, Err: err}
}
