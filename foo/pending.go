package foo

import (
	"slices"
	"sync"
	"time"
)

// pending holds one connection's requests that await an answer: Seq -> the
// time the request was seen. Seqs usually rise and are answered in order,
// so they are kept in a queue sorted by Seq: an answer to the oldest
// request is O(1), any other answer a binary search. Seqs that do not rise
// (repeats, resets) go to a map. At most maxOutstanding requests are held;
// further ones are not tracked.
type pending struct {
	queue []pendingEntry // queue[head:] sorted by seq; queue[head] is never answered
	head  int
	other map[uint64]time.Duration
	live  int // unanswered entries in queue and other
}

// queuePool recycles the queues of closed connections: a deep pipeline
// grows its queue to thousands of entries, and growing a fresh one for
// every connection costs more than the rest of the analysis.
var queuePool sync.Pool // of *[]pendingEntry

// release returns the queue to the pool; p is empty afterwards.
func (p *pending) release() {
	if cap(p.queue) > 0 {
		q := p.queue[:0]
		queuePool.Put(&q)
	}
	*p = pending{}
}

// pendingEntry is a request; at < 0 marks one answered out of order.
type pendingEntry struct {
	seq uint64
	at  time.Duration
}

// add records a request seen at at (>= 0). A Seq already awaiting an
// answer keeps its first time.
func (p *pending) add(seq uint64, at time.Duration) {
	if p.live >= maxOutstanding {
		return
	}
	if len(p.other) > 0 {
		if _, dup := p.other[seq]; dup {
			return
		}
	}
	if p.head == len(p.queue) || seq > p.queue[len(p.queue)-1].seq {
		p.appendQueue(seq, at)
		return
	}
	if i, ok := p.find(seq); ok && p.queue[i].at >= 0 {
		return
	}
	if p.other == nil {
		p.other = map[uint64]time.Duration{}
	}
	p.other[seq] = at
	p.live++
}

// take removes the request an answer with seq refers to and returns when
// it was seen.
func (p *pending) take(seq uint64) (time.Duration, bool) {
	if p.head < len(p.queue) && p.queue[p.head].seq == seq {
		at := p.queue[p.head].at
		p.head++
		p.live--
		p.skipAnswered()
		return at, true
	}
	if i, ok := p.find(seq); ok && p.queue[i].at >= 0 {
		at := p.queue[i].at
		p.queue[i].at = -1
		p.live--
		return at, true
	}
	if len(p.other) > 0 {
		if at, ok := p.other[seq]; ok {
			delete(p.other, seq)
			p.live--
			return at, true
		}
	}
	return 0, false
}

// seqs returns the unanswered Seqs in ascending order.
func (p *pending) seqs() []uint64 {
	out := make([]uint64, 0, p.live)
	for _, e := range p.queue[p.head:] {
		if e.at >= 0 {
			out = append(out, e.seq)
		}
	}
	for seq := range p.other {
		out = append(out, seq)
	}
	slices.Sort(out)
	return out
}

// find returns the queue index holding seq, answered or not.
func (p *pending) find(seq uint64) (int, bool) {
	q := p.queue[p.head:]
	if len(q) == 0 || seq < q[0].seq || seq > q[len(q)-1].seq {
		return 0, false
	}
	i, ok := slices.BinarySearchFunc(q, seq, func(e pendingEntry, s uint64) int {
		switch {
		case e.seq < s:
			return -1
		case e.seq > s:
			return 1
		}
		return 0
	})
	return p.head + i, ok
}

// skipAnswered advances the head past entries answered out of order, and
// rewinds an empty queue.
func (p *pending) skipAnswered() {
	for p.head < len(p.queue) && p.queue[p.head].at < 0 {
		p.head++
	}
	if p.head == len(p.queue) {
		p.queue, p.head = p.queue[:0], 0
	}
}

// appendQueue appends a rising Seq. When the array is full and at least
// half of it is already answered, or the queue holds twice maxOutstanding
// entries, the answered ones are dropped first: each compaction reclaims as
// much as it copies, and the queue stays bounded.
func (p *pending) appendQueue(seq uint64, at time.Duration) {
	if p.queue == nil {
		if q, ok := queuePool.Get().(*[]pendingEntry); ok {
			p.queue = *q
		}
	}
	if len(p.queue) == cap(p.queue) && p.head >= len(p.queue)/2 || len(p.queue)-p.head >= 2*maxOutstanding {
		p.compact()
	}
	p.queue = append(p.queue, pendingEntry{seq, at})
	p.live++
}

// compact moves the unanswered entries to the front of the array.
func (p *pending) compact() {
	q := p.queue[:0]
	for _, e := range p.queue[p.head:] {
		if e.at >= 0 {
			q = append(q, e)
		}
	}
	p.queue, p.head = q, 0
}
