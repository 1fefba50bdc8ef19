package l4amqp

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/modules/relay"
)

// relaySession relays a routed session until both directions end or an
// operator severs it. Broker to client follows frame boundaries
// (amqp.FrameTracker), so that a graceful sever stops between two frames
// and the client gets a Connection.Close it can parse. Plain TCP sessions
// without a data rate go to the process's event loops (relay.Poll);
// others (TLS on either side, data_rate, relay "goroutines") are copied by
// a goroutine per direction through the same adaptive buffers. Bytes the
// handshake read past its last frame go first: the client's to the broker,
// and after, the broker's after its Open-Ok, to the client. It returns the
// bytes each way and how the session ended.
func (s *session) relaySession(l *liveSession, rate int64, after []byte) (in, out int64, ended string) {
	defer relay.Track()()
	client, upstream := s.cx.Conn, l.upstream
	var tr amqp.FrameTracker
	pending := append(s.frames.Buffered(), relay.Prefetched(s.cx)...)
	w, err := replayRead(upstream, pending, l.watch.clientSeen())
	in += w
	if err == nil {
		w, err = replayRead(client, after, brokerSeen(&tr, l.watch))
		out += w
	}
	if err != nil {
		_ = client.Close()
		_ = upstream.Close()
		return in, out, closeClientDropped
	}
	if rate <= 0 && s.h.Relay != relayGoroutines {
		if p := relay.Poll(client, upstream, l.watch.clientSeen(), brokerSeen(&tr, l.watch)); p != nil {
			k, m, ended := s.relayPolled(l, p, &tr)
			return in + k, out + m, ended
		}
	}
	var first atomic.Value // "client" or "broker": whose side ended first
	var wg sync.WaitGroup
	var inN int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		var err error
		inN, err = copyUp(upstream, client, rate, l.watch.clientSeen())
		first.CompareAndSwap(nil, "client")
		l.afterCopy(upstream, client, err)
	}()
	down, err := relay.CopyAdaptive(client, upstream, brokerSeen(&tr, l.watch))
	out += down
	first.CompareAndSwap(nil, "broker")
	if l.sever.Load() == severGraceful {
		k, _ := finishFrame(client, upstream, &tr)
		out += k
	}
	l.afterCopy(client, upstream, err)
	wg.Wait()
	in += inN
	switch {
	case l.sever.Load() == severGraceful:
		s.closeSevered(l, client, upstream, &tr)
		return in, out, closeSevered
	case l.sever.Load() == severNow:
		return in, out, closeSevered
	case tr.LastClose() != 0:
		return in, out, closeClean
	case first.Load() == "client":
		return in, out, closeClientDropped
	default:
		return in, out, closeBrokerDropped
	}
}

// writePending writes b unless it is empty: a side the loop has already
// half-closed takes no write at all, not even an empty one.
func writePending(dst net.Conn, b []byte) (int64, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := dst.Write(b)
	return int64(n), err
}

// replayRead writes bytes the handshake read from one side to the other,
// showing them to seen first as the relay would.
func replayRead(dst net.Conn, b []byte, seen func([]byte)) (int64, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if seen != nil {
		seen(b)
	}
	return writePending(dst, b)
}

// relayPolled waits for a session on an event loop to end. A graceful
// sever takes it out of the loop (Stop) and finishes it here, on the
// sockets the loop hands back.
func (s *session) relayPolled(l *liveSession, p *relay.Polled, tr *amqp.FrameTracker) (in, out int64, ended string) {
	l.polled.Store(p)
	if how := l.sever.Load(); how != 0 {
		l.stopPolled(p, how) // severed before the store: stop saw no loop
	}
	r := p.Wait()
	in, out = r.Up, r.Down
	switch {
	case errors.Is(r.Err, relay.ErrStopped):
		k, m := s.finishStopped(l, p, tr)
		return in + k, out + m, closeSevered
	case l.sever.Load() == severNow:
		return in, out, closeSevered
	case tr.LastClose() != 0:
		return in, out, closeClean
	case r.ClientFirst:
		return in, out, closeClientDropped
	default:
		return in, out, closeBrokerDropped
	}
}

// finishStopped ends a gracefully severed session that its event loop
// handed back: what the loop had read but not sent goes on, the frame the
// broker was in the middle of is completed, then the client gets Close 320.
func (s *session) finishStopped(l *liveSession, p *relay.Polled, tr *amqp.FrameTracker) (in, out int64) {
	client, upstream, upPending, downPending, err := p.Detach()
	if err != nil {
		return 0, 0
	}
	w, _ := writePending(upstream, upPending)
	in += w
	w, _ = writePending(client, downPending)
	out += w
	k, _ := finishFrame(client, upstream, tr)
	out += k
	s.closeSevered(l, client, upstream, tr)
	return in, out
}

// closeSevered ends a graceful sever: the broker's side closes, and the
// client gets Close 320 unless the broker left it mid-frame.
func (s *session) closeSevered(l *liveSession, client, upstream net.Conn, tr *amqp.FrameTracker) {
	_ = upstream.Close()
	// A Close after part of a frame would be garbage to the client: if
	// the broker never completed the frame, the client only sees the
	// connection close.
	if tr.AtBoundary() {
		s.sendCloseOn(client, &amqp.Close{ReplyCode: amqp.ReplyConnectionForced, ReplyText: l.reason()})
	}
	_ = client.Close()
}

// afterCopy ends one direction as relay's pipe does — at EOF half-close the
// destination, on an error close both — unless a graceful sever is under
// way: then the session closes the sockets itself after its Close.
func (l *liveSession) afterCopy(dst, src net.Conn, err error) {
	if l.sever.Load() == severGraceful {
		return
	}
	if err != nil {
		_ = dst.Close()
		_ = src.Close()
		return
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
}

// brokerSeen is what the broker-to-client copy shows its bytes to: the
// frame tracker, and the session's watch (if any).
func brokerSeen(tr *amqp.FrameTracker, w *watch) func([]byte) {
	if w == nil {
		return tr.Feed
	}
	return func(b []byte) {
		tr.Feed(b)
		w.fromBroker(b)
	}
}

func eofIsNil(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// finishFrame completes the frame a stopped copy was in the middle of, so
// that what the client got ends at a frame boundary.
func finishFrame(dst, src net.Conn, tr *amqp.FrameTracker) (int64, error) {
	_ = src.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16<<10)
	var n int64
	for !tr.AtBoundary() {
		need := tr.HeaderMissing()
		if need == 0 {
			rem, _ := tr.Remaining()
			need = int(min(rem, uint64(len(buf))))
		}
		m, err := src.Read(buf[:need])
		tr.Feed(buf[:m])
		w, werr := dst.Write(buf[:m])
		n += int64(w)
		if werr != nil {
			return n, werr
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// copyUp copies client bytes to the broker, showing them to seen (if not nil): through relay.CopyAdaptive,
// or, with a data rate, paced: reads of at most a second's worth (64 KiB at
// most), each followed by a sleep until the bytes so far are within rate.
// Its buffer is borrowed per read and given back before the sleep.
func copyUp(dst, src net.Conn, rate int64, seen func([]byte)) (int64, error) {
	if rate <= 0 {
		return relay.CopyAdaptive(dst, src, seen)
	}
	r := relay.NewReader(src, nil)
	r.Limit(int(min(rate, throttledRead)))
	defer r.Release()
	var n int64
	start := time.Now()
	for {
		b, err := r.Read(throttledBuffers)
		if len(b) > 0 {
			if seen != nil {
				seen(b)
			}
			w, werr := dst.Write(b)
			n += int64(w)
			if werr != nil {
				return n, werr
			}
			r.Release()
			if ahead := time.Duration(float64(n)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
		if err != nil {
			return n, eofIsNil(err)
		}
	}
}

// throttledRead is the most a session with a data rate reads at once.
const throttledRead = 64 << 10

var throttledBuffers = relay.NewBuffers(throttledRead)
