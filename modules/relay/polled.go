package relay

import (
	"errors"
	"net"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Polled is a session relayed by one of the process's event loops instead
// of a goroutine per direction (see loop). Poll starts one; Wait returns
// when it ends. Its sockets are duplicates of the connections Poll was
// given, which Poll closes (so that Go's own poller no longer watches
// them): the relay owns the sockets from then on, and Stop hands them back
// as new connections.
type Polled struct {
	client, upstream *sock
	done             chan struct{}

	// Set on the loop's goroutine before done is closed.
	err      error
	first    *sock // the direction that ended first
	stopped  bool
	leftUp   []byte // read from the client, not sent, when stopped
	leftDown []byte // read from the upstream, not sent, when stopped

	mu     sync.Mutex // guards the descriptors against close while read
	closed bool       // the descriptors are closed or handed back
}

// ErrStopped is Wait's error for a session that Stop took out of its loop.
var ErrStopped = errors.New("relay stopped")

// Poll relays client and upstream on an event loop and shows each chunk
// to upSeen (client to upstream) or downSeen before it is written, on the
// loop's goroutine: they must not block. It returns nil, leaving both
// connections as they were, unless both are plain TCP sockets and epoll
// is available; then the connections are closed and the relay owns
// duplicates of their sockets. At a side's EOF the other is half-closed;
// on an error both close. Bytes must not be pending on either connection
// (write what layer4 prefetched first). The caller counts the session for
// the drain on exit (Track), as for Relay.
func Poll(client, upstream net.Conn, upSeen, downSeen func([]byte)) *Polled {
	c, ok := client.(*net.TCPConn)
	u, ok2 := upstream.(*net.TCPConn)
	if !ok || !ok2 {
		return nil
	}
	l, err := pickLoop()
	if err != nil {
		return nil
	}
	cfd, err := dupSocket(c)
	if err != nil {
		return nil
	}
	ufd, err := dupSocket(u)
	if err != nil {
		_ = unix.Close(cfd)
		return nil
	}
	_ = c.Close()
	_ = u.Close()
	p := &Polled{done: make(chan struct{})}
	p.client = &sock{l: l, p: p, fd: cfd, seen: upSeen}
	p.upstream = &sock{l: l, p: p, fd: ufd, seen: downSeen}
	p.client.peer, p.upstream.peer = p.upstream, p.client
	l.post(p.start)
	return p
}

// dupSocket duplicates c's descriptor (close-on-exec; it shares the
// socket's non-blocking mode), by a raw system call (see rawIO).
func dupSocket(c *net.TCPConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	cerr := raw.Control(func(s uintptr) {
		r, _, errno := unix.RawSyscall(unix.SYS_FCNTL, s, unix.F_DUPFD_CLOEXEC, 0)
		if fd, err = int(r), nil; errno != 0 {
			fd, err = -1, errno
		}
	})
	if cerr != nil {
		return -1, cerr
	}
	return fd, err
}

func (p *Polled) start() {
	for _, s := range [2]*sock{p.client, p.upstream} {
		if err := s.l.register(s); err != nil {
			p.end(s, err)
			return
		}
	}
	// Bytes that arrived before registration raise no edge of their own.
	p.client.readable, p.upstream.readable = true, true
	p.client.pump()
	if !p.ended() {
		p.upstream.pump()
	}
}

func (p *Polled) ended() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// end finishes the session on the loop: the sockets leave it, and are
// closed unless stopped.
func (p *Polled) end(first *sock, err error) {
	if p.ended() {
		return
	}
	if p.first == nil {
		p.first = first
	}
	p.err = err
	for _, s := range [2]*sock{p.client, p.upstream} {
		s.l.unregister(s)
		s.release()
	}
	if !p.stopped {
		p.closeSockets()
	}
	close(p.done)
}

func (p *Polled) closeSockets() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		rawClose(p.client.fd)
		rawClose(p.upstream.fd)
	}
}

// Result is how a polled session ended.
type Result struct {
	Up, Down    int64 // bytes written to the upstream and to the client
	Err         error // nil at EOF both ways; ErrStopped after Stop
	ClientFirst bool  // the client's side ended (or failed) first
}

// Wait blocks until the session ends or is stopped.
func (p *Polled) Wait() Result {
	<-p.done
	r := Result{Up: p.client.n, Down: p.upstream.n, Err: p.err, ClientFirst: p.first == p.client}
	if p.stopped {
		r.Err = ErrStopped
	}
	return r
}

// Stop takes the session out of its loop between two reads; Wait then
// returns ErrStopped and Detach gives the sockets back. Bytes already
// shown to upSeen or downSeen but not yet written are kept for Detach.
// Stop after the end does nothing.
func (p *Polled) Stop() {
	p.client.l.post(func() {
		if p.ended() {
			return
		}
		p.stopped = true
		p.leftUp = append([]byte(nil), p.client.pending...)
		p.leftDown = append([]byte(nil), p.upstream.pending...)
		p.end(nil, nil)
	})
}

// Close ends the session at once, closing both sockets.
func (p *Polled) Close() {
	p.client.l.post(func() { p.end(nil, net.ErrClosed) })
}

// Detach returns, after Wait reported ErrStopped, the two sockets as new
// connections and the bytes read from each side but not yet sent on:
// upPending to the upstream, downPending to the client.
func (p *Polled) Detach() (client, upstream net.Conn, upPending, downPending []byte, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.stopped || p.closed {
		return nil, nil, nil, nil, errors.New("relay: Detach without Stop")
	}
	p.closed = true
	client, err = fileConn(p.client.fd)
	if err != nil {
		_ = unix.Close(p.upstream.fd)
		return nil, nil, nil, nil, err
	}
	upstream, err = fileConn(p.upstream.fd)
	if err != nil {
		_ = client.Close()
		return nil, nil, nil, nil, err
	}
	return client, upstream, p.leftUp, p.leftDown, nil
}

// fileConn turns a descriptor into a connection, which owns a duplicate:
// the descriptor itself is closed.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "relay")
	defer f.Close()
	return net.FileConn(f)
}

// ClientSocket runs fn with the client socket's descriptor, unless the
// session has ended; the descriptor stays open while fn runs.
func (p *Polled) ClientSocket(fn func(fd int)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		fn(p.client.fd)
	}
}

// sock is one socket of a polled session and the direction that reads
// it: bytes read from fd are written to peer.fd.
type sock struct {
	l    *loop
	p    *Polled
	fd   int
	peer *sock
	seen func([]byte)
	n    int64 // bytes written to peer

	pending []byte // read, shown to seen, not yet written to peer
	pbuf    *[]byte
	pfrom   *Buffers

	readable bool // fd may have bytes (or its EOF) to read
	rdhup    bool // the peer shut its side: read until EOF
	eof      bool // fd's EOF was read
	shut     bool // peer was half-closed after that EOF
	queued   bool // in l.ready
}

const (
	evRead  = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR
	evWrite = unix.EPOLLOUT | unix.EPOLLHUP | unix.EPOLLERR
)

// event handles what epoll reported for s: room to write what the other
// direction holds for it, then bytes to read.
func (s *sock) event(ev uint32) {
	if ev&evRead != 0 {
		s.readable = true
	}
	if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		s.rdhup = true
	}
	if ev&evWrite != 0 && s.peer.pending != nil {
		s.peer.flush()
	}
	if !s.p.ended() {
		s.pump()
	}
}

// pump reads s and writes to its peer until s has nothing more, the peer
// cannot take more, or s has had its turn (a full buffer: s is queued to
// be read again after the other sockets).
func (s *sock) pump() {
	for s.readable && !s.eof && s.pending == nil {
		buf := s.l.scratch()
		n, err := rawRead(s.fd, buf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			s.readable = false
			return
		case err != nil:
			s.p.end(s, os.NewSyscallError("read", err))
			return
		case n == 0:
			s.eof = true
			s.endDirection()
			return
		}
		b := buf[:n]
		if s.seen != nil {
			s.seen(b)
		}
		if !s.send(b) {
			return
		}
		if n == len(buf) {
			if !s.queued {
				s.queued = true
				s.l.ready = append(s.l.ready, s)
			}
			return
		}
		if !s.rdhup {
			s.readable = false // a short read emptied the receive queue
			return
		}
	}
}

// send writes b to the peer; what the peer's socket cannot take now is
// kept as pending, and send reports false.
func (s *sock) send(b []byte) bool {
	for len(b) > 0 {
		w, err := rawWrite(s.peer.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			s.pending, s.pbuf, s.pfrom = s.l.keep(b)
			return false
		case err != nil:
			s.p.end(s, os.NewSyscallError("write", err))
			return false
		}
		s.n += int64(w)
		b = b[w:]
	}
	return true
}

// flush writes what s holds for its peer, then goes on reading s.
func (s *sock) flush() {
	for len(s.pending) > 0 {
		w, err := rawWrite(s.peer.fd, s.pending)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return
		case err != nil:
			s.p.end(s, os.NewSyscallError("write", err))
			return
		}
		s.n += int64(w)
		s.pending = s.pending[w:]
	}
	s.release()
	if s.eof {
		s.endDirection()
		return
	}
	s.pump()
}

// endDirection half-closes the peer once s's EOF and everything before it
// were sent; the session ends when both directions have.
func (s *sock) endDirection() {
	if s.pending != nil || s.shut {
		return
	}
	s.shut = true
	rawShutdown(s.peer.fd, unix.SHUT_WR)
	if s.p.first == nil {
		s.p.first = s
	}
	if s.peer.shut {
		s.p.end(nil, nil)
	}
}

// release gives the pending bytes' buffer back.
func (s *sock) release() {
	if s.pbuf != nil {
		s.pfrom.put(s.pbuf)
	}
	s.pending, s.pbuf, s.pfrom = nil, nil, nil
}

// rawRead, rawWrite, rawShutdown and rawClose are read(2), write(2),
// shutdown(2) and close(2) on a non-blocking socket (without SO_LINGER),
// which never block: raw system calls, without telling the scheduler (see
// rawIO for why).
func rawRead(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func rawWrite(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func rawShutdown(fd, how int) {
	_, _, _ = unix.RawSyscall(unix.SYS_SHUTDOWN, uintptr(fd), uintptr(how), 0)
}

func rawClose(fd int) {
	_, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0)
}
