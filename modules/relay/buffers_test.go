package relay

import "testing"

// TestLimitedBuffersFallBack: a limited Buffers lends up to its limit,
// then from its fallback; a buffer given back makes room again, and each
// buffer goes back to the Buffers that lent it.
func TestLimitedBuffersFallBack(t *testing.T) {
	small := NewBuffers(8)
	large := NewLimitedBuffers(64, 2, small)
	var lent []*[]byte
	var from []*Buffers
	for range 3 {
		p, b := large.get()
		lent, from = append(lent, p), append(from, b)
	}
	if len(*lent[0]) != 64 || len(*lent[1]) != 64 || len(*lent[2]) != 8 {
		t.Fatalf("lent sizes %d, %d, %d; want 64, 64, then the fallback's 8", len(*lent[0]), len(*lent[1]), len(*lent[2]))
	}
	if from[0] != large || from[1] != large || from[2] != small {
		t.Fatal("a buffer must go back to the Buffers that lent it")
	}
	if large.Lent() != 2 {
		t.Fatalf("lent %d, want 2", large.Lent())
	}
	from[0].put(lent[0])
	if large.Lent() != 1 {
		t.Fatalf("lent %d after one came back, want 1", large.Lent())
	}
	if p, b := large.get(); len(*p) != 64 || b != large {
		t.Fatalf("after one came back: a %d-byte buffer, want 64", len(*p))
	}
	from[2].put(lent[2])
	if large.Lent() != 2 {
		t.Fatalf("a fallback buffer given back changed the count: %d", large.Lent())
	}
}
