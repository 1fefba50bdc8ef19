package parity

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// socks4Session opens a session through the socks4 handler at proxy to the
// echo server at target and checks that it echoes.
func socks4Session(t *testing.T, proxy, target string) net.Conn {
	t.Helper()
	c := dial(t, proxy)
	ap := netip.MustParseAddrPort(target)
	req := []byte{4, 1, 0, 0}
	binary.BigEndian.PutUint16(req[2:], ap.Port())
	ip := ap.Addr().As4()
	req = append(append(req, ip[:]...), 0)
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 8)
	if _, err := io.ReadFull(c, reply); err != nil || reply[1] != 0x5a {
		t.Fatalf("socks4 reply %v %v", reply, err)
	}
	echo(t, c, "before")
	return c
}

func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("echo %q: %q %v", msg, got, err)
	}
}

// TestShutdownSignals: ProxyMachine's QUIT (graceful) is Caddy's SIGTERM,
// which closes the listeners and lets relayed sessions finish; its TERM
// (fast) is Caddy's SIGQUIT, which exits at once.
func TestShutdownSignals(t *testing.T) {
	bin := e2e.BuildCaddy(t, "..")
	target := echoServer(t)
	cfg := func(listen string) map[string]any {
		return e2e.Layer4(listen, map[string]any{
			"match":  []any{map[string]any{"socks4": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "socks4", "allow": []string{"127.0.0.0/8"}}},
		})
	}
	t.Run("SIGTERM drains", func(t *testing.T) {
		listen := e2e.FreePort(t)
		c := e2e.StartCaddyProcess(t, bin, "", cfg(listen))
		s := socks4Session(t, listen, target)
		c.Signal(t, syscall.SIGTERM)
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if nc, err := net.Dial("tcp", listen); err != nil {
				break // the listener is closed
			} else {
				_ = nc.Close()
			}
			if time.Now().After(deadline) {
				t.Fatal("listener still open 5s after SIGTERM")
			}
		}
		echo(t, s, "during the drain") // the open session still works
		if c.Exited(300 * time.Millisecond) {
			t.Fatal("caddy exited with a session open")
		}
		_ = s.Close()
		if !c.Exited(5 * time.Second) {
			t.Fatal("caddy did not exit after the last session ended")
		}
		if !strings.Contains(c.Logs(), "all relayed sessions ended") {
			t.Errorf("no drain log line:\n%s", c.Logs())
		}
	})
	t.Run("SIGQUIT is immediate", func(t *testing.T) {
		listen := e2e.FreePort(t)
		c := e2e.StartCaddyProcess(t, bin, "", cfg(listen))
		s := socks4Session(t, listen, target)
		c.Signal(t, syscall.SIGQUIT)
		if !c.Exited(5 * time.Second) {
			t.Fatal("caddy did not exit on SIGQUIT")
		}
		_ = s.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := s.Read(make([]byte, 1)); err == nil || n != 0 {
			t.Fatalf("session survived SIGQUIT: %d %v", n, err)
		}
	})
}
