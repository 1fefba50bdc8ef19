package lookup

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/caddyprelude/prelude/lookup/internal/childprio"
)

// A builder is a child process kept to build tables, so that a reload
// starts no process: starting one (vfork) holds the starting thread's
// scheduler slot until the child's execve, milliseconds on a busy CPU.
// It is started at the first build and serves requests over a
// SOCK_SEQPACKET socket pair: the parent sends a table's path; the
// builder answers "o" with the memory file (SCM_RIGHTS), or "e" and a
// parse error. It exits when its end of the socket closes (the parent
// went) or after builderIdle without a request: it holds about 16 MB
// (Caddy's start-up leaves that much Go heap), which a Caddy whose tables
// are not changing should not carry.
type builder struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	conn   *net.UnixConn
	exited chan struct{} // closed once the builder has exited
}

const builderIdle = time.Minute

var theBuilder builder

// build asks the builder for the table at path, within limit. A parse
// error is the builder's; any other failure stops the builder and gives
// errNoChild.
func (b *builder) build(path string, limit time.Duration) (*os.File, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil && b.gone() { // it left, idle
		b.stop()
	}
	if b.conn == nil {
		if err := b.start(); err != nil {
			return nil, fmt.Errorf("%w: %v", errNoChild, err)
		}
	}
	mem, err := b.ask(path, limit)
	if err != nil && errors.Is(err, errNoChild) {
		b.stop()
	}
	return mem, err
}

// gone reports whether the builder has exited.
func (b *builder) gone() bool {
	select {
	case <-b.exited:
		return true
	default:
		return false
	}
}

func (b *builder) ask(path string, limit time.Duration) (*os.File, error) {
	_ = b.conn.SetDeadline(time.Now().Add(limit))
	if _, err := b.conn.Write([]byte(path)); err != nil {
		return nil, fmt.Errorf("%w: %v", errNoChild, err)
	}
	msg, oob := make([]byte, 4<<10), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := b.conn.ReadMsgUnix(msg, oob)
	if err != nil || n == 0 {
		return nil, fmt.Errorf("%w: the builder did not answer: %v", errNoChild, err)
	}
	if msg[0] == 'e' {
		return nil, errors.New(string(msg[1:n]))
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(cmsgs) != 1 {
		return nil, fmt.Errorf("%w: the builder's answer has no memory file", errNoChild)
	}
	fds, err := unix.ParseUnixRights(&cmsgs[0])
	if err != nil || len(fds) != 1 || msg[0] != 'o' {
		return nil, fmt.Errorf("%w: the builder's answer is not a memory file", errNoChild)
	}
	unix.CloseOnExec(fds[0])
	return os.NewFile(uintptr(fds[0]), "prelude-lookup-table"), nil
}

// start starts the builder at the lowest priority.
func (b *builder) start() error {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "builder"), os.NewFile(uintptr(fds[1]), "builder")
	defer theirs.Close()
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return err
	}
	// The running executable, even if a newer one replaced its file.
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), childprio.BuilderEnv+"=1", "GOMAXPROCS=1",
		// A binary built with the race detector (tests) otherwise sleeps a
		// second at exit; others ignore it.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		c.Close()
		return err
	}
	childprio.LowerThread(cmd.Process.Pid)
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }() // reaps it whenever it exits
	b.cmd, b.conn, b.exited = cmd, c.(*net.UnixConn), exited
	return nil
}

func (b *builder) stop() {
	if b.cmd != nil {
		_ = b.cmd.Process.Kill()
	}
	if b.conn != nil {
		b.conn.Close()
	}
	b.cmd, b.conn = nil, nil
}

// serveBuilds is a builder's life: build each table its parent asks for,
// until the parent goes or builderIdle passes without a request.
func serveBuilds() int {
	const fd = 3
	req := make([]byte, 4<<10)
	for {
		// Give back what the start-up (Caddy's package inits) and the last
		// build left: the builder waits with as little as it can.
		debug.FreeOSMemory()
		tv := unix.NsecToTimeval(builderIdle.Nanoseconds())
		_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
		n, err := unix.Read(fd, req)
		if err != nil || n <= 0 {
			return 0
		}
		answer := func(msg []byte, rights []byte) bool {
			return unix.Sendmsg(fd, msg, rights, nil, 0) == nil
		}
		memFd, err := unix.MemfdCreate("prelude-lookup-table", unix.MFD_CLOEXEC)
		if err != nil {
			if !answer([]byte("x"+err.Error()), nil) {
				return 0
			}
			continue
		}
		mem := os.NewFile(uintptr(memFd), "table")
		if err := buildTable(mem, string(req[:n])); err != nil {
			msg := "e" + err.Error()
			if len(msg) > 4<<10 {
				msg = msg[:4<<10]
			}
			mem.Close()
			if !answer([]byte(msg), nil) {
				return 0
			}
			continue
		}
		ok := answer([]byte("o"), unix.UnixRights(memFd))
		mem.Close()
		if !ok {
			return 0
		}
	}
}
