package foo

import (
	"sync"
	"time"
)

// bucketWidth is the resolution of the sliding windows; windowBuckets of
// them span the longest window (10 s).
const (
	bucketWidth   = 100 * time.Millisecond
	windowBuckets = 100
)

// Window counts events in 100 ms buckets over the last 10 s, so that the
// rate over the last 1 s or 10 s is a true count divided by the window.
type Window struct {
	mu      sync.Mutex
	buckets [windowBuckets]uint64
	head    int64 // index (unix time / bucketWidth) of the newest bucket
}

func bucketIndex(t time.Time) int64 { return t.UnixNano() / int64(bucketWidth) }

// advance moves the window to now, zeroing the buckets that slid out.
func (w *Window) advance(now int64) {
	if now <= w.head {
		return
	}
	steps := now - w.head
	if steps > windowBuckets {
		steps = windowBuckets
	}
	for i := int64(1); i <= steps; i++ {
		w.buckets[(w.head+i)%windowBuckets] = 0
	}
	w.head = now
}

// Add counts n events at t.
func (w *Window) Add(t time.Time, n uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	idx := bucketIndex(t)
	w.advance(idx)
	if w.head-idx >= windowBuckets || idx > w.head {
		return
	}
	w.buckets[idx%windowBuckets] += n
}

// Rate is events per second over the last d (a multiple of 100 ms, at most
// 10 s), ending at now.
func (w *Window) Rate(now time.Time, d time.Duration) float64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.advance(bucketIndex(now))
	n := int64(d / bucketWidth)
	var sum uint64
	for i := int64(0); i < n && i < windowBuckets; i++ {
		sum += w.buckets[(w.head-i)%windowBuckets+0]
	}
	return float64(sum) / d.Seconds()
}

// snapshot returns the buckets oldest first and the newest bucket's index.
func (w *Window) snapshot() ([]uint64, int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]uint64, windowBuckets)
	for i := 0; i < windowBuckets; i++ {
		out[i] = w.buckets[(w.head-int64(windowBuckets-1)+int64(i))%windowBuckets]
	}
	return out, w.head
}

// restore loads buckets saved by snapshot.
func (w *Window) restore(b []uint64, head int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buckets = [windowBuckets]uint64{}
	w.head = head
	for i := 0; i < len(b) && i < windowBuckets; i++ {
		w.buckets[(head-int64(windowBuckets-1)+int64(i))%windowBuckets] = b[i]
	}
}
