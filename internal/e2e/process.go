package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartCaddyProcess runs a Caddy binary as its own process with cfg (admin
// and logging added as in StartCaddy), pinned with taskset to cpus if given,
// and waits until every layer4 listener accepts. It stops at the end of the
// test, and fails the test if a NoLeak secret reached its logs.
func StartCaddyProcess(t testing.TB, bin, cpus string, cfg map[string]any) *Caddy {
	t.Helper()
	dir := t.TempDir()
	c := &Caddy{Admin: FreePort(t), LogFile: filepath.Join(dir, "caddy.log")}
	c.NoLeak(TestPassword)
	b, _ := json.Marshal(c.full(cfg))
	cfgFile := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{bin, "run", "--config", cfgFile}
	if cpus != "" {
		args = append([]string{"taskset", "-c", cpus}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &c.stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", strings.Join(args, " "), err)
	}
	c.pid, c.cmd = cmd.Process.Pid, cmd
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		c.checkLeaks(t)
	})
	for _, addr := range listenAddrs(cfg) {
		deadline := time.Now().Add(10 * time.Second)
		for {
			conn, err := net.Dial("tcp", addr)
			if err == nil {
				_ = conn.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("caddy process not listening on %s: %v", addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

func listenAddrs(cfg map[string]any) []string {
	var out []string
	apps, _ := cfg["apps"].(map[string]any)
	l4, _ := apps["layer4"].(map[string]any)
	servers, _ := l4["servers"].(map[string]any)
	for _, s := range servers {
		srv, _ := s.(map[string]any)
		l, _ := srv["listen"].([]string)
		for _, a := range l {
			if !strings.Contains(a, "/") { // TCP only: amqp/<queue> listens on a broker
				out = append(out, a)
			}
		}
	}
	return out
}

// CPUTime is the user and system CPU time of the Caddy process started by
// StartCaddyProcess, from /proc/<pid>/stat (in clock ticks of 10ms), or of
// this whole process for an in-process Caddy.
func (c *Caddy) CPUTime() time.Duration {
	if c.pid == 0 {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return ProcessCPU(c.pid)
}

// Separate reports whether Caddy runs as its own process.
func (c *Caddy) Separate() bool { return c.pid != 0 }

// ProcessCPU is the user and system CPU time of process pid so far, from
// /proc/<pid>/stat (clock ticks of 10 ms), or 0 if it cannot be read.
func ProcessCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the ")" that ends the command name: state is field 3,
	// utime field 14, stime field 15 (proc(5)).
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// Signal sends sig to a Caddy started by StartCaddyProcess.
func (c *Caddy) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// Exited waits up to timeout for the Caddy process to exit.
func (c *Caddy) Exited(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { _, _ = c.cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// BuildCaddy builds ./cmd/caddy into a temporary directory and returns the
// binary's path.
func BuildCaddy(t testing.TB, repoRoot string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "caddy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer is a bytes.Buffer safe for a process writing and a test reading.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

// Stdout is what a Caddy started by StartCaddyProcess wrote to stdout.
func (c *Caddy) Stdout() string {
	c.stdout.mu.Lock()
	defer c.stdout.mu.Unlock()
	return string(c.stdout.b)
}

// LiveHeap returns the bytes of live heap objects after a full collection
// (two of them: a sync.Pool lets go of its objects over two), for tests
// that bound what idle connections keep.
func LiveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// RSS is the resident memory of a Caddy started by StartCaddyProcess, in
// bytes (VmRSS of /proc/<pid>/status), or 0 in process or if unreadable.
func (c *Caddy) RSS() uint64 {
	if c.pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(c.pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// Footprint is RSS plus the pages of the memory files Caddy maps that it
// has not touched yet, plus the private memory (RssAnon) of its child
// processes: a lookup table is built by a child process (the table
// builder) into a memory file (memfd), whose pages count in VmRSS only
// once read, but take memory all the same. 0 in process or if
// unreadable.
func (c *Caddy) Footprint() uint64 {
	rss := c.RSS()
	if rss == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(c.pid) + "/smaps")
	if err != nil {
		return 0
	}
	var size, resident uint64
	inMemfd := false
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 5 && strings.Contains(fields[0], "-"): // a mapping's first line
			inMemfd = len(fields) >= 6 && strings.HasPrefix(fields[5], "/memfd:")
		case inMemfd && len(fields) == 3 && fields[0] == "Size:":
			v, _ := strconv.ParseUint(fields[1], 10, 64)
			size += v << 10
		case inMemfd && len(fields) == 3 && fields[0] == "Rss:":
			v, _ := strconv.ParseUint(fields[1], 10, 64)
			resident += v << 10
		}
	}
	return rss + size - resident + childrenAnon(c.pid)
}

// childrenAnon sums RssAnon of pid's child processes.
func childrenAnon(pid int) uint64 {
	var total uint64
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, child := range strings.Fields(string(b)) {
			st, err := os.ReadFile("/proc/" + child + "/status")
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(st), "\n") {
				if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
					kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
					total += kb << 10
				}
			}
		}
	}
	return total
}
