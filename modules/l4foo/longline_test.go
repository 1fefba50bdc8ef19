package l4foo_test

import (
	"bufio"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// exchange writes request to the proxy at addr in one write and returns
// everything the proxy sends back until it closes the connection, failing
// on a reset: the client must be able to read the proxy's NAKs.
func exchange(t *testing.T, addr, request string) string {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("after %q: %v (want a clean close)", got, err)
	}
	return string(got)
}

// TestLongClientLineNAKsWhatIsOutstanding: a client line over max_line
// ends the connection. The complete requests before it in the same read
// still reach the server and are counted; the server had no time to
// answer them, so the client gets the proxy's NAK for each, saying why.
func TestLongClientLineNAKsWhatIsOutstanding(t *testing.T) {
	received := make(chan string, 1)
	server := e2e.ServeTCP(t, func(c net.Conn) { // answers nothing
		defer c.Close()
		b, _ := io.ReadAll(c)
		received <- string(b)
	})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json")))
	got := exchange(t, addr, "REQ 1 a\nREQ 2 b\nREQ 3 "+strings.Repeat("x", 2000)+"\n")
	const reason = " proxy: a line from the client is over max_line (1024 bytes)\n"
	if want := "NAK 1" + reason + "NAK 2" + reason; got != want {
		t.Fatalf("client got %q, want %q", got, want)
	}
	if got := <-received; got != "REQ 1 a\nREQ 2 b\n" {
		t.Fatalf("server got %q, want the two complete requests", got)
	}
	if r := waitIdle(t, c); r.MsgReq != 2 || r.InvalidLines != 1 || r.ProxyNAKs != 2 {
		t.Fatalf("%+v", r)
	}
}

// TestLongServerLineNAKsWhatIsOutstanding: an answer over max_line ends the
// connection; the answers before it reach the client, and the requests it
// left unanswered get the proxy's NAK.
func TestLongServerLineNAKsWhatIsOutstanding(t *testing.T) {
	server := e2e.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		for range 3 {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
		}
		_, _ = io.WriteString(c, "ACK 1\nACK 2 "+strings.Repeat("x", 2000)+"\n")
		_, _ = io.Copy(io.Discard, r)
	})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json")))
	got := exchange(t, addr, "REQ 1 a\nREQ 2 b\nREQ 3 c\n")
	const reason = " proxy: a line from the server is over max_line (1024 bytes)\n"
	if want := "ACK 1\nNAK 2" + reason + "NAK 3" + reason; got != want {
		t.Fatalf("client got %q, want %q", got, want)
	}
	if r := waitIdle(t, c); r.MsgReq != 3 || r.MsgAck != 1 || r.InvalidLines != 1 || r.ProxyNAKs != 2 {
		t.Fatalf("%+v", r)
	}
}

// TestLongServerLineMidWayGetsNoNAK: when the start of the long answer
// already reached the client (it came in an earlier read), the client is
// in the middle of a line and a NAK there would be garbled: it gets the
// bytes it was sent, then the close.
func TestLongServerLineMidWayGetsNoNAK(t *testing.T) {
	head := "ACK 1 " + strings.Repeat("x", 600)
	server := e2e.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		_, _ = io.WriteString(c, head)
		time.Sleep(100 * time.Millisecond) // a read of its own
		_, _ = io.WriteString(c, strings.Repeat("y", 600)+"\n")
		_, _ = io.Copy(io.Discard, r)
	})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json")))
	if got := exchange(t, addr, "REQ 1 a\n"); got != head {
		t.Fatalf("client got %q, want the %d bytes sent before the line grew too long", got, len(head))
	}
	if r := waitIdle(t, c); r.InvalidLines != 1 || r.ProxyNAKs != 0 {
		t.Fatalf("%+v", r)
	}
}
