// Package relay is the data path every Caddy Prelude handler ends in: bytes
// copied both ways between the client's and the upstream's raw sockets
// through adaptive user-space buffers (CopyAdaptive), borrowed only while
// bytes are there (DESIGN.md, "The data path"; BENCHMARKS.md for why not
// splice(2)).
package relay

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

// Relay copies bytes both ways between the client and the upstream until both
// directions end, and returns the bytes sent upstream (client to upstream) and
// downstream. It copies between the raw sockets through CopyAdaptive: up to
// 1 MiB per system call for a busy direction, no buffer at all for an idle
// one. Measured faster and cheaper than splice(2) on loopback, which also
// holds a pipe (two file descriptors) per direction for the whole session
// (BENCHMARKS.md). Bytes the layer4 connection still buffers are sent first.
func Relay(cx *layer4.Connection, upstream net.Conn) (up, down int64, err error) {
	defer Track()()
	if pending := Prefetched(cx); len(pending) > 0 {
		w, err := upstream.Write(pending)
		up += int64(w)
		if err != nil {
			return up, 0, err
		}
	}
	client := cx.Conn
	var upN atomic.Int64
	errc := make(chan error, 1)
	go func() {
		n, err := pipe(upstream, client)
		upN.Store(n)
		errc <- err
	}()
	down, err = pipe(client, upstream)
	if upErr := <-errc; err == nil {
		err = upErr
	}
	return up + upN.Load(), down, err
}

// Prefetched takes the client's bytes that layer4 read while matching and
// still buffers: they come before anything read from cx.Conn, the raw
// socket a relay reads.
func Prefetched(cx *layer4.Connection) []byte {
	pending := cx.MatchingBytes()
	if len(pending) == 0 {
		return nil
	}
	b := make([]byte, len(pending))
	n, _ := io.ReadFull(cx, b)
	return b[:n]
}

// pipe copies src to dst. At src's EOF it half-closes dst so the peer sees
// the end of the stream while the other direction drains; on an error it
// closes both, which also ends the other direction.
func pipe(dst, src net.Conn) (int64, error) {
	n, err := CopyAdaptive(dst, src, nil)
	return n, endPipe(dst, src, err)
}

// endPipe ends one direction: on an error both connections close; at EOF
// dst is half-closed.
func endPipe(dst, src net.Conn, err error) error {
	if err != nil {
		_ = dst.Close()
		_ = src.Close()
		return err
	}
	if cw, ok := dst.(closeWriter); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
	return nil
}

// closeWriter is implemented by *net.TCPConn and *tls.Conn.
type closeWriter interface{ CloseWrite() error }

// ErrNoFirstByte means the upstream sent nothing within the timeout given
// to AwaitFirstByte.
var ErrNoFirstByte = errors.New("upstream sent nothing")

// AwaitFirstByte waits up to timeout for the upstream's first byte and
// passes it to the client, so that a handler can still answer in its own
// protocol when the upstream stays silent (nothing has reached the client
// yet). It reads one byte, then the relay takes over.
func AwaitFirstByte(client, upstream net.Conn, timeout time.Duration) (int64, error) {
	_ = upstream.SetReadDeadline(time.Now().Add(timeout))
	var b [1]byte
	n, err := upstream.Read(b[:])
	_ = upstream.SetReadDeadline(time.Time{})
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, ErrNoFirstByte
	}
	if n == 0 {
		return 0, err
	}
	if _, err := client.Write(b[:n]); err != nil {
		return 0, err
	}
	return int64(n), nil
}

// CloseAfterReply ends a connection the proxy has just answered (an ERR
// line, a refusal): it half-closes, then reads and discards what the client
// still sends for up to linger, so that closing with unread input does not
// turn into a TCP reset that can destroy the answer before the client
// reads it.
func CloseAfterReply(c net.Conn, linger time.Duration) {
	DrainAfterReply(c, linger)
	_ = c.Close()
}

// DrainAfterReply is CloseAfterReply without the close: it half-closes c
// and discards its input until EOF, 1 MiB or linger, whichever comes first.
func DrainAfterReply(c net.Conn, linger time.Duration) {
	if cw, ok := c.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
	_ = c.SetReadDeadline(time.Now().Add(linger))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

// DrainTimeout is how long a Caddy that is exiting gracefully (SIGTERM,
// `caddy stop`) waits for relayed sessions to end on their own. Its
// listeners are closed first, so no new session starts meanwhile. SIGQUIT
// exits at once.
// The environment variable PRELUDE_DRAIN_TIMEOUT (a Go duration) overrides
// it.
var DrainTimeout = drainTimeout()

func drainTimeout() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("PRELUDE_DRAIN_TIMEOUT")); err == nil && d >= 0 {
		return d
	}
	return 30 * time.Second
}

var (
	active        atomic.Int64 // sessions in Relay, process-wide
	registerDrain sync.Once
)

// Track counts a session that copies bytes itself (outside Relay) for the
// graceful-exit drain; call the returned function when it ends.
func Track() (done func()) {
	registerDrain.Do(func() { caddy.OnExit(drainOnExit) })
	active.Add(1)
	return func() { active.Add(-1) }
}

// Active is the number of sessions being relayed in this process.
func Active() int64 { return active.Load() }

func drainOnExit(context.Context) {
	n := active.Load()
	if n == 0 {
		return
	}
	log := caddy.Log().Named("layer4.relay")
	log.Info("waiting for relayed sessions to end", zap.Int64("sessions", n), zap.Duration("timeout", DrainTimeout))
	for deadline := time.Now().Add(DrainTimeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if active.Load() == 0 {
			log.Info("all relayed sessions ended")
			return
		}
	}
	log.Warn("drain timeout: exiting with sessions open", zap.Int64("sessions", active.Load()))
}
