package relay

import (
	"io"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestSlowConsumersHoldBoundedBuffers: a copy from a fast producer to a
// slow consumer holds the buffer it read for as long as its write waits,
// which is nearly always, and its reads keep filling buffers, so it reads
// into large ones. Only maxLargeLent of those (4 here) are lent at once;
// the other copies read into small buffers. Before the limit, 24 such
// copies held 24 MiB.
func TestSlowConsumersHoldBoundedBuffers(t *testing.T) {
	const copies, limit = 24, 4
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
	// The pools may keep as many again that were given back (per-P caches).
	if max := int64(2*limit*largeBuffer + copies*smallBuffer + 2<<20); grown > max {
		t.Fatalf("%d slow copies added %d KiB of heap, want under %d KiB", copies, grown>>10, max>>10)
	}
	// The metrics tell an operator the limit is reached.
	reg := prometheus.NewRegistry()
	RegisterMetrics(reg)
	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		m := f.GetMetric()[0]
		got[f.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	if got["caddy_layer4_relay_large_buffers_lent"] != limit || got["caddy_layer4_relay_large_buffers_limit"] != limit ||
		got["caddy_layer4_relay_large_buffer_fallbacks_total"] == 0 {
		t.Fatalf("metrics: %v", got)
	}
}
