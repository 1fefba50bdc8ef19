package foo

import (
	"slices"
	"testing"
	"time"
)

// pendingModel is the obvious implementation pending must agree with.
type pendingModel map[uint64]time.Duration

func (m pendingModel) add(seq uint64, at time.Duration) {
	if _, dup := m[seq]; !dup && len(m) < maxOutstanding {
		m[seq] = at
	}
}

func (m pendingModel) take(seq uint64) (time.Duration, bool) {
	at, ok := m[seq]
	delete(m, seq)
	return at, ok
}

// runPending replays ops on pending and on the model: each op is a request
// (add) or an answer (take) for a Seq, at a rising time.
func runPending(t *testing.T, ops []pendingOp) {
	t.Helper()
	var p pending
	m := pendingModel{}
	for i, op := range ops {
		at := time.Duration(i)
		if op.answer {
			got, gotOK := p.take(op.seq)
			want, wantOK := m.take(op.seq)
			if got != want || gotOK != wantOK {
				t.Fatalf("op %d take(%d) = %v %v, want %v %v", i, op.seq, got, gotOK, want, wantOK)
			}
		} else {
			p.add(op.seq, at)
			m.add(op.seq, at)
		}
		if p.live != len(m) {
			t.Fatalf("op %d: %d live, model %d", i, p.live, len(m))
		}
		if len(p.queue)-p.head > 2*maxOutstanding {
			t.Fatalf("op %d: queue holds %d entries", i, len(p.queue)-p.head)
		}
	}
}

type pendingOp struct {
	answer bool
	seq    uint64
}

func reqs(seqs ...uint64) []pendingOp {
	var ops []pendingOp
	for _, s := range seqs {
		ops = append(ops, pendingOp{seq: s})
	}
	return ops
}

func answers(seqs ...uint64) []pendingOp {
	var ops []pendingOp
	for _, s := range seqs {
		ops = append(ops, pendingOp{answer: true, seq: s})
	}
	return ops
}

func cat(parts ...[]pendingOp) []pendingOp {
	var ops []pendingOp
	for _, p := range parts {
		ops = append(ops, p...)
	}
	return ops
}

func TestPending(t *testing.T) {
	cases := map[string][]pendingOp{
		"in order":              cat(reqs(1, 2, 3), answers(1, 2, 3)),
		"reversed":              cat(reqs(1, 2, 3, 4), answers(4, 3, 2, 1)),
		"middle first":          cat(reqs(1, 2, 3, 4), answers(3, 1, 2, 4)),
		"unknown answer":        cat(reqs(1, 2), answers(7, 0, 1, 1, 2, 2)),
		"repeat while waiting":  cat(reqs(5, 5, 3, 3), answers(5, 5, 3, 3)),
		"repeat after answer":   cat(reqs(1, 2, 3), answers(2), reqs(2), answers(2, 2, 1, 3)),
		"falling seqs":          cat(reqs(9, 8, 7), answers(7, 8, 9)),
		"reset after drain":     cat(reqs(10), reqs(3), answers(10), reqs(2, 3), answers(3, 2, 3)),
		"wraps to zero":         cat(reqs(1<<64-1, 0), answers(0, 1<<64-1)),
		"interleaved pipeline":  cat(reqs(1, 2), answers(1), reqs(3, 4), answers(3, 2), reqs(5), answers(5, 4)),
		"answers before asking": cat(answers(1, 2), reqs(1, 2), answers(2, 1)),
	}
	for name, ops := range cases {
		t.Run(name, func(t *testing.T) { runPending(t, ops) })
	}
}

// TestPendingBounded: a request that is never answered, while later ones
// are answered out of order, must not let answered entries pile up, and
// at most maxOutstanding requests are tracked.
func TestPendingBounded(t *testing.T) {
	ops := reqs(0)
	for s := uint64(1); s <= 5*maxOutstanding; s += 2 {
		ops = append(ops, reqs(s, s+1)...)
		ops = append(ops, answers(s+1, s)...) // never the oldest
	}
	runPending(t, ops)

	var flood []pendingOp
	for s := uint64(0); s < 2*maxOutstanding; s++ {
		flood = append(flood, pendingOp{seq: s * 3 % (2 * maxOutstanding)})
	}
	runPending(t, cat(flood, answers(1, 2, 3, maxOutstanding+1)))
}

func FuzzPending(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0x81, 0x82, 0x83})
	f.Add([]byte{5, 4, 3, 0x85, 0x83, 0x84, 3, 0x83})
	f.Fuzz(func(t *testing.T, b []byte) {
		ops := make([]pendingOp, len(b))
		for i, c := range b {
			ops[i] = pendingOp{answer: c&0x80 != 0, seq: uint64(c & 0x7f)}
		}
		runPending(t, ops)
	})
}

func TestPendingSeqs(t *testing.T) {
	var p pending
	for _, s := range []uint64{3, 5, 7, 9, 4, 1} { // 4 and 1 fall: they go to the map
		p.add(s, 0)
	}
	for _, s := range []uint64{7, 3, 4} {
		if _, ok := p.take(s); !ok {
			t.Fatalf("take %d", s)
		}
	}
	if got := p.seqs(); !slices.Equal(got, []uint64{1, 5, 9}) {
		t.Fatalf("outstanding %v, want [1 5 9]", got)
	}
}
