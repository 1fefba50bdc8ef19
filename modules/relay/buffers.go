package relay

import (
	"sync"
	"sync/atomic"
)

// Buffers lends read buffers of one size, recycled through a sync.Pool.
// With a limit, at most that many are lent at once; past it, Buffers lends
// from its fallback instead, so that what a process holds in them is
// bounded however many sessions want them.
type Buffers struct {
	pool     sync.Pool
	limit    int64 // 0: none
	lent     atomic.Int64
	fellBack atomic.Uint64 // loans the limit sent to the fallback
	fallback *Buffers
}

// NewBuffers lends buffers of size bytes, without a limit.
func NewBuffers(size int) *Buffers {
	b := &Buffers{}
	b.pool.New = func() any { p := make([]byte, size); return &p }
	return b
}

// NewLimitedBuffers lends at most limit buffers of size bytes at once, and
// then buffers from fallback.
func NewLimitedBuffers(size int, limit int64, fallback *Buffers) *Buffers {
	b := NewBuffers(size)
	b.limit, b.fallback = limit, fallback
	return b
}

// get lends a buffer, and returns the Buffers to give it back to.
func (b *Buffers) get() (*[]byte, *Buffers) {
	if b.limit > 0 && b.lent.Add(1) > b.limit {
		b.lent.Add(-1)
		b.fellBack.Add(1)
		return b.fallback.get()
	}
	return b.pool.Get().(*[]byte), b
}

// put takes back a buffer get lent.
func (b *Buffers) put(p *[]byte) {
	b.pool.Put(p)
	if b.limit > 0 {
		b.lent.Add(-1)
	}
}

// Lent is how many buffers are out (counted only with a limit).
func (b *Buffers) Lent() int64 { return b.lent.Load() }

// FellBack is how many loans the limit sent to the fallback so far.
func (b *Buffers) FellBack() uint64 { return b.fellBack.Load() }
