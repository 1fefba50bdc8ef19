package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// Redis is a private redis-server (Debian's) on a loopback port of its
// own, so that a test may restart it, stop it and configure it without
// touching the machine's shared Redis. It keeps nothing on disk.
type Redis struct {
	Addr     string
	password string // from --requirepass, sent by Do
	args     []string
	t        testing.TB
	mu       sync.Mutex
	cmd      *exec.Cmd
}

// RequireRedisServer fails (under CI) or skips the test when Debian's
// redis-server is not installed.
func RequireRedisServer(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server is not installed; `make test` installs it (scripts/test-deps.sh)"
		if CI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// StartRedis starts a redis-server publishing every keyspace notification
// (notify-keyspace-events KA), extra arguments added to its command line.
// It is stopped when the test ends.
func StartRedis(t testing.TB, extra ...string) *Redis {
	t.Helper()
	bin := RequireRedisServer(t)
	addr := FreePort(t)
	host, port, _ := net.SplitHostPort(addr)
	r := &Redis{Addr: addr, t: t, args: append([]string{"--bind", host, "--port", port,
		"--save", "", "--appendonly", "no", "--notify-keyspace-events", "KA",
		"--dir", t.TempDir(), "--protected-mode", "no"}, extra...)}
	r.args = append([]string{bin}, r.args...)
	for i, a := range extra {
		if a == "--requirepass" && i+1 < len(extra) {
			r.password = extra[i+1]
		}
	}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start starts the server again after Stop, on the same address.
func (r *Redis) Start() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	cmd := exec.Command(r.args[0], r.args[1:]...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("redis-server: %v", err)
	}
	r.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := r.Do("PING"); err == nil || strings.Contains(err.Error(), "NOAUTH") {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	r.cmd = nil
	out.mu.Lock()
	defer out.mu.Unlock()
	r.t.Fatalf("redis-server did not start at %s:\n%s", r.Addr, out.b)
}

// Stop kills the server (a crash, as far as its clients can tell) and
// waits for it to exit.
func (r *Redis) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// Do sends one command and returns its reply (bulk replies: the value;
// nil bulk: "(nil)"; arrays are not read). Tests use it to set routes and
// config.
func (r *Redis) Do(args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", r.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	if r.password != "" {
		if _, err := roundTrip(c, br, "AUTH", r.password); err != nil {
			return "", err
		}
	}
	return roundTrip(c, br, args...)
}

func roundTrip(c net.Conn, br *bufio.Reader, args ...string) (string, error) {
	req := fmt.Sprintf("*%d\r\n", len(args))
	for _, a := range args {
		req += fmt.Sprintf("$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(req)); err != nil {
		return "", err
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("redis: %s", line[1:])
	case line == "$-1":
		return "(nil)", nil
	case strings.HasPrefix(line, "$"):
		v, err := br.ReadString('\n')
		return strings.TrimRight(v, "\r\n"), err
	}
	return strings.TrimLeft(line, "+:"), nil
}

// MustDo is Do failing the test on error.
func (r *Redis) MustDo(args ...string) string {
	r.t.Helper()
	v, err := r.Do(args...)
	if err != nil {
		r.t.Fatalf("redis %s: %v", strings.Join(args, " "), err)
	}
	return v
}
