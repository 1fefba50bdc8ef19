package relay

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestSlowConsumersHoldBoundedBuffers: a copy from a fast producer to a
// slow consumer holds the buffer it read for as long as its write waits,
// which is nearly always, and its reads keep filling buffers, so it reads
// into large ones. Only maxLargeLent of those (4 here) are lent at once;
// the other copies read into small buffers. Before the limit, 16 such
// copies held 16 MiB.
func TestSlowConsumersHoldBoundedBuffers(t *testing.T) {
	const copies, limit = 16, 4
	saved := largeBuffers
	largeBuffers = NewLimitedBuffers(largeBuffer, limit, smallBuffers)
	var copying sync.WaitGroup
	defer func() { copying.Wait(); largeBuffers = saved }()
	type copyEnds struct{ in, src, dst, out io.ReadWriteCloser }
	ends := make([]copyEnds, copies)
	chunks, reads := make([][]byte, copies), make([][]byte, copies)
	for i := range ends {
		in, src := tcpPair(t)
		dst, out := tcpPair(t)
		ends[i] = copyEnds{in, src, dst, out}
		chunks[i], reads[i] = make([]byte, 64<<10), make([]byte, 16<<10)
	}
	before := e2e.LiveHeap()
	done := make(chan struct{})
	defer func() { // runs before the restore above
		close(done)
		for _, e := range ends {
			_, _, _, _ = e.in.Close(), e.src.Close(), e.dst.Close(), e.out.Close()
		}
	}()
	for i, e := range ends {
		copying.Add(1)
		go func() { defer copying.Done(); _, _ = CopyAdaptive(e.dst, e.src, nil) }()
		go func() {
			for {
				if _, err := e.in.Write(chunks[i]); err != nil {
					return
				}
			}
		}()
		go func() {
			for {
				select {
				case <-done:
					return
				case <-time.After(10 * time.Millisecond):
				}
				if _, err := io.ReadFull(e.out, reads[i]); err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(time.Second)
	grown := int64(e2e.LiveHeap()) - int64(before)
	t.Logf("%d slow copies: %d KiB of heap, %d large buffers lent", copies, grown>>10, largeBuffers.Lent())
	if n := largeBuffers.Lent(); n != limit {
		t.Fatalf("%d large buffers lent, want exactly the limit, %d", n, limit)
	}
	if max := int64(limit*largeBuffer + copies*smallBuffer + 2<<20); grown > max {
		t.Fatalf("%d slow copies added %d KiB of heap, want under %d KiB", copies, grown>>10, max>>10)
	}
}
