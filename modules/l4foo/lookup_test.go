package l4foo_test

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestLookupByClientAddress: Foo clients routed by a lookup keyed by
// {l4.conn.remote_ip}: a client the table holds reaches its server and is
// counted; a client it does not hold gets the proxy's NAK naming the key,
// and no server is dialed.
func TestLookupByClientAddress(t *testing.T) {
	server := e2e.ServeTCP(t, func(c net.Conn) { // ACKs every request
		defer c.Close()
		r := bufio.NewScanner(c)
		for r.Scan() {
			f := strings.Fields(r.Text())
			if len(f) >= 2 && f[0] == "REQ" {
				if _, err := c.Write([]byte("ACK " + f[1] + "\n")); err != nil {
					return
				}
			}
		}
	})
	routes := filepath.Join(t.TempDir(), "clients.tsv")
	if err := os.WriteFile(routes, []byte("127.0.0.1\t"+server+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, server, filepath.Join(t.TempDir(), "foo.json"), map[string]any{"to": nil,
		"lookup": map[string]any{"source": "file", "path": routes, "key": "{l4.conn.remote_ip}", "refresh": int64(50 * time.Millisecond)}}))
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("REQ 1 hello\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || line != "ACK 1\n" {
		t.Fatalf("routed client got %q, %v", line, err)
	}
	_ = conn.Close()
	if r := waitIdle(t, c); r.MsgReq != 1 || r.MsgAck != 1 {
		t.Fatalf("%+v", r)
	}
	// The table loses 127.0.0.1: the next client gets the proxy's NAK.
	if err := os.WriteFile(routes+".tmp", []byte("10.9.9.9\t"+server+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(routes+".tmp", routes); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, body := c.Get(t, "/prelude/lookups/foo%20default?key=127.0.0.1")
		if strings.Contains(body, `"found":false`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the table without 127.0.0.1 not in use after 3 s: %s", body)
		}
	}
	got := exchange(t, addr, "REQ 7 hello\n")
	if want := "NAK 7 proxy: no route for key \"127.0.0.1\"\n"; got != want {
		t.Fatalf("unrouted client got %q, want %q", got, want)
	}
}
