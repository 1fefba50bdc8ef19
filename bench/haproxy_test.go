package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// haproxy is an HAProxy in TCP mode with its defaults in front of one
// upstream: a reference proxy written in C, for the benchmarks that name
// it. (It copies through user space unless told to splice; `option
// splice-auto` measured the same in BenchmarkFooMessages.) It runs only
// when PRELUDE_BENCH_HAPROXY names its binary, pinned like Caddy to
// PRELUDE_BENCH_CADDY_CPUS, with one thread, when that is set.
type haproxy struct {
	Addr string
	pid  int
}

// startHAProxy starts one forwarding to target, or returns nil when
// PRELUDE_BENCH_HAPROXY is unset.
func startHAProxy(b *testing.B, target string) *haproxy {
	bin := os.Getenv("PRELUDE_BENCH_HAPROXY")
	if bin == "" {
		return nil
	}
	cpus := os.Getenv("PRELUDE_BENCH_CADDY_CPUS")
	threads := 2 // both vCPUs, as an in-process Caddy has
	if cpus != "" {
		threads = 1
	}
	h := &haproxy{Addr: e2e.FreePort(b)}
	cfg := fmt.Sprintf(`global
	nbthread %d
	maxconn 4096
defaults
	mode tcp
	timeout connect 5s
	timeout client 5m
	timeout server 5m
frontend bench
	bind %s
	default_backend upstream
backend upstream
	server s1 %s
`, threads, h.Addr, target)
	file := filepath.Join(b.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(file, []byte(cfg), 0o600); err != nil {
		b.Fatal(err)
	}
	args := []string{bin, "-f", file, "-db"}
	if cpus != "" {
		args = append([]string{"taskset", "-c", cpus}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("starting %s: %v", strings.Join(args, " "), err)
	}
	h.pid = cmd.Process.Pid
	b.Cleanup(func() { _ = cmd.Process.Signal(syscall.SIGTERM); _ = cmd.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", h.Addr); err == nil {
			_ = c.Close()
			return h
		}
		if time.Now().After(deadline) {
			b.Fatalf("haproxy not listening on %s", h.Addr)
		}
	}
}

// CPUTime is the process's CPU time so far; zero for a nil haproxy.
func (h *haproxy) CPUTime() time.Duration {
	if h == nil {
		return 0
	}
	return e2e.ProcessCPU(h.pid)
}

// RSS is the process's resident memory, bytes.
func (h *haproxy) RSS() uint64 { return rssOf(h.pid) }
