package e2e

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RequireGit fails (under CI) or skips the test when git is missing.
func RequireGit(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		if CI() {
			t.Fatal("git is not installed; `make test` installs it")
		}
		t.Skip("git is not installed; `make test` installs it")
	}
}

// Git runs git in dir with a clean, loopback-only environment and returns
// its stdout and stderr.
func Git(t testing.TB, dir string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1",
		"HOME="+dir, "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// MustGit runs git and fails the test on error.
func MustGit(t testing.TB, dir string, args ...string) string {
	t.Helper()
	out, errOut, err := Git(t, dir, args...)
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// MakeBareRepo creates a bare repository at path with commits commits on
// main, each adding a file, and returns the hash of main.
func MakeBareRepo(t testing.TB, path string, commits int) string {
	t.Helper()
	work := t.TempDir()
	MustGit(t, work, "init", "-q", "-b", "main")
	for i := 0; i < commits; i++ {
		name := filepath.Join(work, "file"+strconv.Itoa(i)+".txt")
		if err := os.WriteFile(name, []byte(strings.Repeat("line "+strconv.Itoa(i)+"\n", 50)), 0o644); err != nil {
			t.Fatal(err)
		}
		MustGit(t, work, "add", ".")
		MustGit(t, work, "commit", "-q", "-m", "commit "+strconv.Itoa(i))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	MustGit(t, work, "clone", "-q", "--bare", work, path)
	return strings.TrimSpace(MustGit(t, path, "rev-parse", "main"))
}

// GitDaemon is a `git daemon` serving a base directory on loopback.
type GitDaemon struct {
	Addr string
	Base string
}

// StartGitDaemon serves base (every repository exported, upload-archive and
// receive-pack enabled, errors told to clients) on a free loopback port
// until the test ends.
func StartGitDaemon(t testing.TB, base string) *GitDaemon {
	t.Helper()
	return startGitDaemon(t, base, "--informative-errors")
}

// StartTerseGitDaemon is StartGitDaemon with git daemon's default errors:
// a request it cannot serve, such as one for a missing repository, gets
// only "access denied or repository not exported".
func StartTerseGitDaemon(t testing.TB, base string) *GitDaemon {
	t.Helper()
	return startGitDaemon(t, base)
}

func startGitDaemon(t testing.TB, base string, extra ...string) *GitDaemon {
	t.Helper()
	RequireGit(t)
	addr := FreePort(t)
	host, port, _ := net.SplitHostPort(addr)
	args := append([]string{"daemon", "--reuseaddr", "--export-all", "--base-path=" + base,
		"--enable=receive-pack", "--enable=upload-archive"}, extra...)
	cmd := exec.Command("git", append(args, "--listen="+host, "--port="+port, base)...)
	cmd.Env = append(os.Environ(), "HOME="+base)
	var logs bytes.Buffer
	cmd.Stderr = &logs
	// The daemon forks a child per connection: run it in its own process
	// group and end the group, and do not wait on pipes the children hold.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("git daemon: %v", err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("git daemon did not listen on %s: %s", addr, logs.String())
		}
	}
	return &GitDaemon{Addr: addr, Base: base}
}

// GitProxyEnv is the environment variable that turns a test binary into a
// git core.gitProxy command: it connects to the address in the variable and
// copies stdin and stdout to and from it. Git runs the proxy command instead
// of resolving and dialing the URL's host, so tests can send any host=
// parameter (mirror.local) while every byte stays on loopback.
const GitProxyEnv = "PRELUDE_TEST_GIT_PROXY"

// ServeGitProxyIfAsked runs the proxy and exits when the binary was started
// as git's proxy command. Call it first in TestMain.
func ServeGitProxyIfAsked() {
	addr := os.Getenv(GitProxyEnv)
	if addr == "" {
		return
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		os.Exit(1)
	}
	go func() {
		_, _ = io.Copy(c, os.Stdin)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(os.Stdout, c)
	os.Exit(0)
}

// GitProxyArgs returns git arguments that send git:// connections through
// this test binary to addr (see GitProxyEnv), for the rest of the test.
func GitProxyArgs(t *testing.T, addr string) []string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(GitProxyEnv, addr)
	return []string{"-c", "core.gitProxy=" + exe}
}
