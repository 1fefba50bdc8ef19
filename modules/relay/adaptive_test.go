package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestCopyAdaptive copies a stream of small writes, then a bulk burst,
// between TCP sockets: every byte arrives in order, seen sees each once,
// and the count returned matches.
func TestCopyAdaptive(t *testing.T) {
	data := make([]byte, 6<<20)
	_, _ = rand.Read(data)
	srcW, srcR := tcpPair(t)
	dstW, dstR := tcpPair(t)
	go func() {
		for i := 0; i < 1000; i++ { // small writes first: small buffers
			_, _ = srcW.Write(data[i*100 : (i+1)*100])
		}
		_, _ = srcW.Write(data[100000:]) // then a burst
		_ = srcW.CloseWrite()
	}()
	var seen int
	done := make(chan error, 1)
	var n int64
	go func() {
		var err error
		n, err = CopyAdaptive(dstW, srcR, func(b []byte) { seen += len(b) })
		_ = dstW.CloseWrite()
		done <- err
	}()
	got, err := io.ReadAll(dstR)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("CopyAdaptive: %v", err)
	}
	if !bytes.Equal(got, data) || n != int64(len(data)) || seen != len(data) {
		t.Fatalf("copied %d bytes (returned %d, seen %d), want %d intact", len(got), n, seen, len(data))
	}
}

// TestIdleCopiesHoldNoBuffers: 200 copies waiting on quiet TCP sockets
// add far less heap than the 16 KiB buffer each held before buffers were
// borrowed only while a read has bytes.
func TestIdleCopiesHoldNoBuffers(t *testing.T) {
	const copies = 200
	liveHeap := func() uint64 {
		runtime.GC()
		runtime.GC() // a sync.Pool lets go of its objects over two collections
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	type pair struct{ w, r *net.TCPConn }
	pairs := make([]pair, copies)
	for i := range pairs {
		w, r := tcpPair(t)
		pairs[i] = pair{w, r}
	}
	before := liveHeap()
	for _, p := range pairs {
		go func() { _, _ = CopyAdaptive(io.Discard, p.r, nil) }()
		_, _ = p.w.Write([]byte("one read, then quiet"))
	}
	time.Sleep(200 * time.Millisecond)
	perCopy := (int64(liveHeap()) - int64(before)) / copies
	t.Logf("%d bytes of heap per idle copy", perCopy)
	if perCopy > 4<<10 {
		t.Fatalf("%d bytes of heap per idle copy, want under 4 KiB", perCopy)
	}
	for _, p := range pairs {
		_ = p.w.Close()
	}
}

// BenchmarkCopyAdaptive copies a bulk stream between loopback TCP sockets
// (a writer, CopyAdaptive, a reader discarding), in 64 KiB writes.
func BenchmarkCopyAdaptive(b *testing.B) {
	const total = 64 << 20
	chunk := make([]byte, 64<<10)
	b.SetBytes(total)
	for i := 0; i < b.N; i++ {
		srcW, srcR := tcpPair(b)
		dstW, dstR := tcpPair(b)
		go func() {
			for sent := 0; sent < total; sent += len(chunk) {
				_, _ = srcW.Write(chunk)
			}
			_ = srcW.CloseWrite()
		}()
		go func() {
			_, _ = CopyAdaptive(dstW, srcR, nil)
			_ = dstW.CloseWrite()
		}()
		if n, _ := io.Copy(io.Discard, dstR); n != total {
			b.Fatalf("copied %d of %d bytes", n, total)
		}
	}
}
