package relay

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"
)

// pollPair relays between the server side of one TCP pair (the "client"
// as the relay sees it) and the client side of another (the "upstream"),
// on an event loop, and returns the two outer ends.
func pollPair(t *testing.T, upSeen, downSeen func([]byte)) (client, upstream *net.TCPConn, p *Polled) {
	t.Helper()
	client, front := tcpPair(t)
	back, upstream := tcpPair(t)
	p = Poll(front, back, upSeen, downSeen)
	if p == nil {
		t.Fatal("Poll refused two TCP connections")
	}
	return client, upstream, p
}

// randomBytes returns n bytes from r.
func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeChunks writes b to c in chunks of random sizes (up to max), then
// half-closes c.
func writeChunks(c *net.TCPConn, b []byte, r *rand.Rand, max int) {
	for i := 0; i < len(b); {
		k := min(len(b)-i, 1+r.IntN(max))
		if _, err := c.Write(b[i : i+k]); err != nil {
			return
		}
		i += k
	}
	_ = c.CloseWrite()
}

// TestPollRelaysBothWays: bytes go both ways at once, in small and large
// writes, each side half-closes in turn, and the relay reports exact
// counts, shows every byte to its seen function once and in order, and
// says whose side ended first.
func TestPollRelaysBothWays(t *testing.T) {
	for _, max := range []int{16, 1500, 300 << 10} {
		r := rand.New(rand.NewPCG(uint64(max), 7))
		upData, downData := randomBytes(r, 3<<20), randomBytes(r, 5<<20)
		var upSeen, downSeen bytes.Buffer
		client, upstream, p := pollPair(t, func(b []byte) { upSeen.Write(b) }, func(b []byte) { downSeen.Write(b) })
		var wg sync.WaitGroup
		var gotUp, gotDown []byte
		wg.Add(4)
		go func() { defer wg.Done(); writeChunks(client, upData, rand.New(rand.NewPCG(1, 1)), max) }()
		go func() { defer wg.Done(); gotUp, _ = io.ReadAll(upstream) }()
		go func() { defer wg.Done(); gotDown, _ = io.ReadAll(client) }()
		go func() {
			defer wg.Done()
			time.Sleep(20 * time.Millisecond) // the client's side ends first
			writeChunks(upstream, downData, rand.New(rand.NewPCG(2, 2)), max)
		}()
		res := p.Wait()
		wg.Wait()
		if res.Err != nil || res.Up != int64(len(upData)) || res.Down != int64(len(downData)) {
			t.Fatalf("max %d: result %+v, want %d up and %d down", max, res, len(upData), len(downData))
		}
		if !bytes.Equal(gotUp, upData) || !bytes.Equal(gotDown, downData) {
			t.Fatalf("max %d: the bytes differ (%d up, %d down received)", max, len(gotUp), len(gotDown))
		}
		if !bytes.Equal(upSeen.Bytes(), upData) || !bytes.Equal(downSeen.Bytes(), downData) {
			t.Fatalf("max %d: seen functions got %d and %d bytes, or other bytes", max, upSeen.Len(), downSeen.Len())
		}
		if !res.ClientFirst {
			t.Fatalf("max %d: the client's side ended first, the result says otherwise", max)
		}
	}
}

// TestPollSlowReader: a reader that takes its bytes slowly fills the
// socket buffers; the relay keeps what it could not write and stops
// reading until the reader catches up. Nothing is lost or duplicated.
func TestPollSlowReader(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 3))
	data := randomBytes(r, 16<<20)
	client, upstream, p := pollPair(t, nil, nil)
	go writeChunks(upstream, data, r, 1<<20)
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := client.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
		if got.Len() < 1<<20 {
			time.Sleep(time.Millisecond)
		}
	}
	_ = client.CloseWrite()
	res := p.Wait()
	if !bytes.Equal(got.Bytes(), data) || res.Down != int64(len(data)) {
		t.Fatalf("received %d of %d bytes (equal: %v), result %+v", got.Len(), len(data), bytes.Equal(got.Bytes(), data), res)
	}
}

// TestPollStopHandsBack: Stop in the middle of a stream takes the session
// out of its loop; Detach returns working connections on the same sockets
// and the bytes read but not yet sent. Sending those and copying on from
// the returned connections delivers the stream exactly.
func TestPollStopHandsBack(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	data := randomBytes(r, 8<<20)
	var seen int64
	var mu sync.Mutex
	client, upstream, p := pollPair(t, nil, func(b []byte) { mu.Lock(); seen += int64(len(b)); mu.Unlock() })
	go writeChunks(upstream, data, r, 64<<10)
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(client); got <- b }()
	time.Sleep(5 * time.Millisecond)
	p.Stop()
	res := p.Wait()
	if !errors.Is(res.Err, ErrStopped) {
		t.Fatalf("Wait after Stop: %v", res.Err)
	}
	c, u, upPending, downPending, err := p.Detach()
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	if res.Down+int64(len(downPending)) != seen {
		t.Fatalf("%d written + %d pending, but %d shown to seen", res.Down, len(downPending), seen)
	}
	mu.Unlock()
	if len(upPending) != 0 {
		t.Fatalf("%d bytes pending upstream, none were sent", len(upPending))
	}
	// The stop may come after the whole stream was relayed and the client's
	// side half-closed: then nothing is pending and nothing may be written.
	if len(downPending) > 0 {
		if _, err := c.Write(downPending); err != nil {
			t.Fatal(err)
		}
	}
	n, err := io.Copy(c, u)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("client got %d of %d bytes (%d before the stop, %d pending, %d after)", len(b), len(data), res.Down, len(downPending), n)
	}
	_ = c.Close()
	_ = u.Close()
	if _, _, _, _, err := p.Detach(); err == nil {
		t.Fatal("a second Detach succeeded")
	}
}

// TestPollClose: Close ends the session at once; both peers see their
// connection end, and Wait returns.
func TestPollClose(t *testing.T) {
	client, upstream, p := pollPair(t, nil, nil)
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(upstream, buf); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if res := p.Wait(); res.Err == nil {
		t.Fatal("Wait after Close: no error")
	}
	for _, c := range []*net.TCPConn{client, upstream} {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err == nil {
			t.Fatal("a peer could still read after Close")
		}
	}
	p.ClientSocket(func(int) { t.Fatal("ClientSocket ran after the end") })
}

// TestPollRefusesWrappedConnections: only two plain TCP connections go to
// a loop; anything else is left as it was.
func TestPollRefusesWrappedConnections(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c, _ := tcpPair(t)
	if Poll(a, c, nil, nil) != nil || Poll(c, b, nil, nil) != nil {
		t.Fatal("Poll took a net.Pipe")
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("the TCP connection was closed: %v", err)
	}
}

// TestPollManySessions: sessions spread over the loops each relay their
// own bytes, with the readers and writers of all running at once.
func TestPollManySessions(t *testing.T) {
	const sessions = 40
	var wg sync.WaitGroup
	for i := range sessions {
		r := rand.New(rand.NewPCG(uint64(i), 9))
		data := randomBytes(r, 64<<10+r.IntN(1<<20))
		client, upstream, p := pollPair(t, nil, nil)
		wg.Add(1)
		go func() {
			defer wg.Done()
			go writeChunks(client, data, r, 8<<10)
			got, _ := io.ReadAll(upstream)
			_ = upstream.CloseWrite()
			res := p.Wait()
			if !bytes.Equal(got, data) || res.Up != int64(len(data)) || res.Err != nil {
				t.Errorf("session %d: %d of %d bytes, result %+v", i, len(got), len(data), res)
			}
		}()
	}
	wg.Wait()
}
