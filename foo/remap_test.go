package foo

import (
	"errors"
	"testing"
)

func TestRemapKeepsClientsApart(t *testing.T) {
	var r Remap[string]
	a1, _ := r.Request("a", 1)
	b1, _ := r.Request("b", 1)
	a2, _ := r.Request("a", 2)
	if a1 == b1 || a1 == a2 || b1 == a2 {
		t.Fatalf("shared Seqs collide: %d %d %d", a1, b1, a2)
	}
	for _, tt := range []struct {
		shared uint64
		client string
		seq    uint64
	}{{b1, "b", 1}, {a2, "a", 2}, {a1, "a", 1}} {
		c, s, ok := r.Answer(tt.shared)
		if !ok || c != tt.client || s != tt.seq {
			t.Fatalf("answer %d: %s %d %v, want %s %d", tt.shared, c, s, ok, tt.client, tt.seq)
		}
	}
	if _, _, ok := r.Answer(a1); ok {
		t.Fatal("a second answer to one request was mapped")
	}
}

func TestRemapBoundsAndForget(t *testing.T) {
	r := Remap[int]{Max: 3}
	for i := range 3 {
		if _, err := r.Request(i%2, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Request(9, 9); !errors.Is(err, ErrRemapFull) {
		t.Fatalf("fourth request: %v, want ErrRemapFull", err)
	}
	if n := r.Forget(0); n != 2 || r.Outstanding() != 1 {
		t.Fatalf("forget: %d, outstanding %d", n, r.Outstanding())
	}
	var drained []int
	r.Drain(func(c int, _ uint64) { drained = append(drained, c) })
	if len(drained) != 1 || drained[0] != 1 || r.Outstanding() != 0 {
		t.Fatalf("drain: %v", drained)
	}
}

func TestRemapWrapsAroundOutstanding(t *testing.T) {
	r := Remap[int]{next: 1<<64 - 2}
	a, _ := r.Request(1, 1) // 1<<64-1
	b, _ := r.Request(1, 2) // wraps to 0
	c, _ := r.Request(1, 3)
	if a == b || b == c || a == c {
		t.Fatalf("wrapped Seqs collide: %d %d %d", a, b, c)
	}
}

func TestAppendLine(t *testing.T) {
	for _, tt := range []struct {
		in   string
		seq  uint64
		want string
	}{{"ACK 7", 3, "ACK 3\n"}, {"NAK 12 deadbeef", 99, "NAK 99 deadbeef\n"}, {"REQ 1 hello world", 5, "REQ 5 hello world\n"}, {"REQ 1 ", 5, "REQ 5 \n"}} {
		m, err := ParseLine([]byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		if got := string(AppendLine(nil, m, tt.seq)); got != tt.want {
			t.Fatalf("%q as %d: %q, want %q", tt.in, tt.seq, got, tt.want)
		}
	}
}
