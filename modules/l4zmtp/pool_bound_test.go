package l4zmtp

import (
	"context"
	"fmt"
	"testing"
)

// TestPoolForgetsEmptyMechanisms: mechanism names come from workers'
// greetings; a name nobody is parked under any more leaves no entry.
func TestPoolForgetsEmptyMechanisms(t *testing.T) {
	p := acquirePool("bound-test")
	defer releasePool("bound-test")
	var ws []*parked
	for i := range 100 {
		w := &parked{host: "127.0.0.1", mechanism: fmt.Sprintf("MADE-UP-%d", i), taken: make(chan struct{})}
		p.park(w)
		ws = append(ws, w)
	}
	for _, w := range ws[:50] {
		if !p.remove(w) {
			t.Fatal("a parked worker was not found")
		}
	}
	for _, w := range ws[50:] {
		if got, err := p.take(context.Background(), w.mechanism, ""); err != nil || got != w {
			t.Fatalf("take %s: %v", w.mechanism, err)
		}
	}
	if n := len(p.counts()); n != 0 {
		t.Fatalf("%d mechanism entries left, want none", n)
	}
	w := &parked{host: "127.0.0.1", mechanism: "NULL", taken: make(chan struct{})}
	p.park(w)
	p.remove(w)
	if got := p.counts(); len(got) != 1 || got["NULL"] != 0 {
		t.Fatalf("counts after a NULL worker left: %v, want NULL listed at 0", got)
	}
}
