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
// operator severs it. Client to broker is a plain copy (relay.CopyAdaptive,
// or a throttled one with data_rate); broker to client follows frame
// boundaries (amqp.FrameTracker) through the same adaptive buffers, so
// a graceful sever stops between two frames and the client gets a
// Connection.Close it can parse. It returns the bytes
// each way and how the session ended.
func (s *session) relaySession(l *liveSession, rate int64) (in, out int64, ended string) {
	defer relay.Track()()
	client, upstream := s.cx.Conn, l.upstream
	if pending := relay.Prefetched(s.cx); len(pending) > 0 {
		w, err := upstream.Write(pending)
		in += int64(w)
		if err != nil {
			_ = client.Close()
			return in, 0, closeClientDropped
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
	var tr amqp.FrameTracker
	out, err := copyFrames(client, upstream, &tr, l.watch)
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
		_ = upstream.Close()
		// A Close after part of a frame would be garbage to the client: if
		// the broker never completed the frame, the client only sees the
		// connection close.
		if tr.AtBoundary() {
			s.sendClose(&amqp.Close{ReplyCode: amqp.ReplyConnectionForced, ReplyText: l.reason()})
		}
		_ = client.Close()
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

// copyFrames copies broker frames to the client, tracking boundaries and
// feeding the session's watch (if any). It returns nil at the broker's EOF.
func copyFrames(dst, src net.Conn, tr *amqp.FrameTracker, w *watch) (int64, error) {
	if w == nil {
		return relay.CopyAdaptive(dst, src, tr.Feed)
	}
	return relay.CopyAdaptive(dst, src, func(b []byte) {
		tr.Feed(b)
		w.fromBroker(b)
	})
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
