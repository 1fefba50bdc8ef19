package l4foo_test

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/foo/footest"
	"github.com/caddyprelude/prelude/internal/e2e"
)

// countingServer is footest's server behind a relay that counts the
// connections the proxy opens to it.
func countingServer(t *testing.T, opts footest.ServerOptions) *e2e.Relay {
	srv := footest.StartServer(t, opts)
	return e2e.StartRelay(t, "127.0.0.1:0", srv.Addr)
}

// ownAnswers sends n pipelined REQs numbered 1..n (every client uses the
// same Seqs) with a payload naming the client, and checks that it gets
// exactly one ACK or NAK for each of its Seqs.
func ownAnswers(addr string, id, n int) (footest.Counts, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return footest.Counts{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "REQ %d client-%d\n", i, id)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return footest.Counts{}, err
	}
	counts := footest.Counts{Req: n}
	seen := map[uint64]bool{}
	r := bufio.NewReader(c)
	for len(seen) < n {
		line, err := r.ReadString('\n')
		if err != nil {
			return counts, fmt.Errorf("client %d after %d answers: %w", id, len(seen), err)
		}
		m, err := foo.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
		if err != nil || m.Type == foo.REQ || m.Seq < 1 || m.Seq > uint64(n) || seen[m.Seq] {
			return counts, fmt.Errorf("client %d: answer %q is not for one of its requests", id, line)
		}
		seen[m.Seq] = true
		if m.Type == foo.ACK {
			counts.Ack++
		} else {
			counts.Nak++
		}
	}
	return counts, nil
}

// TestPoolMultiplexesClients: 200 short-lived clients, all using Seqs
// 1..20, share at most 2 server connections; every client gets exactly its
// own answers with its own Seqs, and the stats count as without a pool.
func TestPoolMultiplexesClients(t *testing.T) {
	server := countingServer(t, footest.ServerOptions{Reverse: 5, SplitWrite: true})
	addr := e2e.FreePort(t)
	c := e2e.StartCaddy(t, config(addr, server.Addr, filepath.Join(t.TempDir(), "foo.json"),
		map[string]any{"pool": map[string]any{"max_connections": 2}}))
	const clients, perClient = 200, 20
	var wg sync.WaitGroup
	var acks, naks atomic.Int64
	errs := make(chan error, clients)
	for id := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := ownAnswers(addr, id, perClient)
			acks.Add(int64(got.Ack))
			naks.Add(int64(got.Nak))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := server.Conns.Load(); n > 2 {
		t.Fatalf("%d server connections for %d clients, want at most 2", n, clients)
	}
	r := waitIdle(t, c)
	if r.MsgReq != clients*perClient || int64(r.MsgAck) != acks.Load() || int64(r.MsgNak) != naks.Load() || r.InvalidLines != 0 {
		t.Fatalf("clients got %d ACK %d NAK of %d requests; stats %+v", acks.Load(), naks.Load(), clients*perClient, r)
	}
	if r.LatencySamples != clients*perClient {
		t.Fatalf("latency samples %d, want one per request", r.LatencySamples)
	}
}

// TestPoolServerLostNAKsOutstanding: a shared server connection that dies
// with requests outstanding answers each of them with the proxy's NAK, to
// the client that sent it; the next client gets a new connection.
func TestPoolServerLostNAKsOutstanding(t *testing.T) {
	srv := footest.StartServer(t, footest.ServerOptions{})
	server := e2e.StartRelay(t, "127.0.0.1:0", srv.Addr)
	addr := e2e.FreePort(t)
	e2e.StartCaddy(t, config(addr, server.Addr, filepath.Join(t.TempDir(), "foo.json"),
		map[string]any{"pool": map[string]any{"max_connections": 1}}))
	if _, err := ownAnswers(addr, 0, 5); err != nil {
		t.Fatal(err)
	}
	server.Freeze() // requests now go unanswered
	conns := make([]net.Conn, 3)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "REQ 7 x\nREQ 8 y\n")
		conns[i] = c
	}
	time.Sleep(200 * time.Millisecond)
	server.Cut()
	server.Thaw()
	for i, c := range conns {
		r := bufio.NewReader(c)
		got := map[string]bool{}
		for range 2 {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("client %d: %v", i, err)
			}
			got[line] = true
		}
		if !got["NAK 7 proxy: the shared server connection was lost\n"] || !got["NAK 8 proxy: the shared server connection was lost\n"] {
			t.Fatalf("client %d got %v", i, got)
		}
	}
	if _, err := ownAnswers(addr, 1, 5); err != nil {
		t.Fatalf("after the loss: %v", err)
	}
}
