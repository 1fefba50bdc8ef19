package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
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

// TestIdleCopiesHoldNoBuffers: 200 of the relay's copies (pipe) between
// quiet TCP sockets add far less heap than the 16 KiB buffer each held
// before buffers were borrowed only while a read has bytes, and no file
// descriptor (a spliced copy holds a pipe, two descriptors, for as long as
// it runs).
func TestIdleCopiesHoldNoBuffers(t *testing.T) {
	const copies = 200
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	type copyEnds struct{ in, src, dst, out *net.TCPConn }
	ends := make([]copyEnds, copies)
	for i := range ends {
		in, src := tcpPair(t)
		dst, out := tcpPair(t)
		ends[i] = copyEnds{in, src, dst, out}
	}
	fdsBefore := fds()
	before := e2e.LiveHeap()
	for _, e := range ends {
		go func() { _, _ = pipe(e.dst, e.src) }()
		_, _ = e.in.Write([]byte("one read, then quiet"))
		if _, err := io.ReadFull(e.out, make([]byte, 20)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	perCopy := (int64(e2e.LiveHeap()) - int64(before)) / copies
	t.Logf("%d bytes of heap per idle copy", perCopy)
	if perCopy > 4<<10 {
		t.Fatalf("%d bytes of heap per idle copy, want under 4 KiB", perCopy)
	}
	if n := fds() - fdsBefore; n > 0 {
		t.Fatalf("%d more file descriptors with %d idle copies, want none", n, copies)
	}
}

// BenchmarkCopyAdaptive copies a bulk stream between loopback TCP sockets
// (a writer, the copy, a reader discarding; 64 KiB writes), and
// BenchmarkCopySplice does the same with io.Copy between the two
// *net.TCPConn, which Go turns into splice(2): the data path the relay used
// before. Both report the process's CPU per GB (writer and reader
// included, the same in both).
func BenchmarkCopyAdaptive(b *testing.B) {
	benchCopy(b, func(dst, src *net.TCPConn) { _, _ = CopyAdaptive(dst, src, nil) })
}

func BenchmarkCopySplice(b *testing.B) {
	benchCopy(b, func(dst, src *net.TCPConn) { _, _ = io.Copy(dst, src) })
}

func benchCopy(b *testing.B, copy func(dst, src *net.TCPConn)) {
	const total = 64 << 20
	chunk := make([]byte, 64<<10)
	b.SetBytes(total)
	cpu := processCPU()
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
			copy(dstW, srcR)
			_ = dstW.CloseWrite()
		}()
		if n, _ := io.Copy(io.Discard, dstR); n != total {
			b.Fatalf("copied %d of %d bytes", n, total)
		}
	}
	b.ReportMetric((processCPU()-cpu).Seconds()/(float64(b.N)*total/1e9), "cpu-s/GB")
}

// processCPU returns the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRoundTripAdaptive and BenchmarkRoundTripSplice relay small
// request/response exchanges (8 bytes each way) through two copies, one per
// direction, to an echo server: where splice(2) gains nothing from moving
// pages and each copy pays per system call.
func BenchmarkRoundTripAdaptive(b *testing.B) {
	benchRoundTrip(b, func(dst, src *net.TCPConn) { _, _ = CopyAdaptive(dst, src, nil) })
}

func BenchmarkRoundTripSplice(b *testing.B) {
	benchRoundTrip(b, func(dst, src *net.TCPConn) { _, _ = io.Copy(dst, src) })
}

func benchRoundTrip(b *testing.B, copy func(dst, src *net.TCPConn)) {
	client, front := tcpPair(b)
	back, server := tcpPair(b)
	go copy(back, front)
	go copy(front, back)
	go func() { // echo
		b := make([]byte, 64)
		for {
			n, err := server.Read(b)
			if err != nil {
				return
			}
			_, _ = server.Write(b[:n])
		}
	}()
	msg := []byte("REQ 1 x\n")
	buf := make([]byte, len(msg))
	b.ResetTimer()
	cpu := processCPU()
	for i := 0; i < b.N; i++ {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
}
