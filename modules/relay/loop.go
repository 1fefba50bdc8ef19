package relay

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A loop relays many sessions' plain TCP sockets from one goroutine: one
// edge-triggered epoll instance, non-blocking reads and writes, no
// goroutine parked per direction and no wake-up handed from a reader to a
// writer (the design of HAProxy's and netpoll's event loops). Everything
// that touches a loop's sockets and state runs on its goroutine; other
// goroutines reach it through commands (post), which wake it through an
// eventfd.
//
// Edge-triggered epoll reports a socket once per change. A read that
// returns less than it asked for has emptied the socket's receive queue,
// so the next bytes raise a new event; a read that fills the buffer may
// have left more, so the socket is queued (ready) and read again after the
// other sockets of the batch have had their turn. A socket whose peer has
// hung up (EPOLLRDHUP) is read until its EOF.
type loop struct {
	epfd   int
	wakefd int
	waitOn syscall.RawConn // epfd, as Go's own poller sees it
	socks  map[int32]*sock // by file descriptor: the loop's goroutine only
	ready  []*sock         // readable sockets to read again: likewise
	buf    *[]byte         // the read buffer every read shares
	bufsOf *Buffers        // where buf came from

	mu   sync.Mutex
	cmds []func()
	woke atomic.Bool // a wake-up is pending: later posts need not write
}

var (
	loopsOnce sync.Once
	loops     []*loop
	loopsErr  error
	nextLoop  atomic.Uint32
)

// pickLoop returns one of the process's loops (started on first use, one
// per CPU Go runs on, at most four), round robin, or an error if epoll is
// not available.
func pickLoop() (*loop, error) {
	loopsOnce.Do(func() {
		n := min(runtime.GOMAXPROCS(0), 4)
		for range n {
			l, err := newLoop()
			if err != nil {
				loopsErr = err
				return
			}
			loops = append(loops, l)
			go l.run()
		}
	})
	if loopsErr != nil {
		return nil, loopsErr
	}
	return loops[int(nextLoop.Add(1))%len(loops)], nil
}

func newLoop() (*loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return nil, err
	}
	// Go's poller waits on the epoll instance (readable when it has
	// events), so that the loop's goroutine parks like any other instead
	// of blocking its thread in epoll_wait: no thread hand-off, no wake-up
	// of the runtime's monitor.
	if err := unix.SetNonblock(epfd, true); err != nil {
		_ = unix.Close(epfd)
		_ = unix.Close(wakefd)
		return nil, err
	}
	waitOn, err := os.NewFile(uintptr(epfd), "relay-epoll").SyscallConn()
	if err != nil {
		_ = unix.Close(wakefd)
		return nil, err
	}
	l := &loop{epfd: epfd, wakefd: wakefd, waitOn: waitOn, socks: map[int32]*sock{}}
	l.buf, l.bufsOf = largeBuffers.get()
	return l, nil
}

// post runs f on the loop's goroutine, soon.
func (l *loop) post(f func()) {
	l.mu.Lock()
	l.cmds = append(l.cmds, f)
	l.mu.Unlock()
	if l.woke.CompareAndSwap(false, true) {
		one := [8]byte{1}
		_, _ = rawWrite(l.wakefd, one[:])
	}
}

// run handles the loop's events for ever. It takes them without waiting
// (epoll_wait with timeout 0, a raw system call: it never blocks) and,
// when there are none and no socket waits to be read again, parks until
// Go's poller reports the epoll instance readable.
func (l *loop) run() {
	events := make([]unix.EpollEvent, 256)
	var n int
	take := func(uintptr) bool {
		n = epollTake(l.epfd, events)
		return n > 0 || len(l.ready) > 0
	}
	for {
		if err := l.waitOn.Read(take); err != nil {
			panic("relay: waiting on epoll: " + err.Error()) // only if closed: a bug
		}
		for i := 0; i < n; i++ {
			ev := &events[i]
			if ev.Fd == int32(l.wakefd) {
				l.runCommands()
				continue
			}
			if s := l.socks[ev.Fd]; s != nil {
				s.event(ev.Events)
			}
		}
		l.readAgain()
	}
}

func (l *loop) runCommands() {
	var b [8]byte
	_, _ = rawRead(l.wakefd, b[:])
	l.woke.Store(false)
	l.mu.Lock()
	cmds := l.cmds
	l.cmds = nil
	l.mu.Unlock()
	for _, f := range cmds {
		f()
	}
}

// readAgain reads the sockets whose last read filled the buffer.
func (l *loop) readAgain() {
	ready := l.ready
	l.ready = nil
	for _, s := range ready {
		s.queued = false
		if !s.p.ended() {
			s.pump()
		}
	}
}

// epollTake returns the events ready now, without waiting.
func epollTake(epfd int, events []unix.EpollEvent) int {
	for {
		n, _, errno := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(epfd),
			uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		switch errno {
		case 0:
			return int(n)
		case unix.EINTR:
			continue
		}
		panic("relay: epoll_wait: " + errno.Error()) // EBADF/EFAULT/EINVAL: a bug
	}
}

// scratch is the buffer a read fills. Bytes a write could not send are
// moved out of it (keep) before the next read.
func (l *loop) scratch() []byte { return *l.buf }

// keep hands the bytes b (the tail of the scratch buffer) to a socket
// waiting to write them, and returns the buffer that now holds them and
// its pool. A short tail is copied into a small buffer; a long one keeps
// the scratch buffer itself, and the loop reads into a new one.
func (l *loop) keep(b []byte) ([]byte, *[]byte, *Buffers) {
	if len(b) <= smallBuffer {
		p, from := smallBuffers.get()
		return (*p)[:copy(*p, b)], p, from
	}
	p, from := l.buf, l.bufsOf
	l.buf, l.bufsOf = largeBuffers.get()
	return b, p, from
}

// register adds a socket to the loop, edge-triggered, for reads, writes
// and the peer's hang-up.
func (l *loop) register(s *sock) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(s.fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
		return err
	}
	l.socks[int32(s.fd)] = s
	return nil
}

func (l *loop) unregister(s *sock) {
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
	delete(l.socks, int32(s.fd))
}
