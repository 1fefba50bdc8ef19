package socks4

import (
	"errors"
	"testing"
)

// captures: what curl 7.88 sends for --socks4 127.0.0.1:8080 and
// --socks4a localhost:8080 (user "" and "bob").
var captures = map[string][]byte{
	"socks4":      {4, 1, 0x1f, 0x90, 127, 0, 0, 1, 0},
	"socks4-user": {4, 1, 0x1f, 0x90, 127, 0, 0, 1, 'b', 'o', 'b', 0},
	"socks4a":     {4, 1, 0x1f, 0x90, 0, 0, 0, 1, 0, 'l', 'o', 'c', 'a', 'l', 'h', 'o', 's', 't', 0},
}

func TestParse(t *testing.T) {
	want := map[string]string{"socks4": "127.0.0.1:8080", "socks4-user": "127.0.0.1:8080", "socks4a": "localhost:8080"}
	for name, b := range captures {
		r, n, err := Parse(append(b, "GET / HTTP/1.0\r\n"...))
		if err != nil || n != len(b) || r.Addr() != want[name] || r.Command != CmdConnect {
			t.Errorf("%s: %+v %d %v", name, r, n, err)
		}
		for i := 0; i < len(b); i++ {
			if _, _, err := Parse(b[:i]); !errors.Is(err, ErrNeedMore) {
				t.Errorf("%s prefix %d: %v, want ErrNeedMore", name, i, err)
			}
		}
	}
}

func TestMalformed(t *testing.T) {
	long := append([]byte{4, 1, 0, 80, 1, 2, 3, 4}, make([]byte, 300)...)
	for i := 8; i < len(long); i++ {
		long[i] = 'a'
	}
	for name, b := range map[string][]byte{
		"socks5":   {5, 1, 0},
		"http":     []byte("GET / HTTP/1.1\r\n"),
		"amqp":     []byte("AMQP\x00\x00\x09\x01"),
		"git":      []byte("0032git-upload-pack /x"),
		"bad-cmd":  {4, 3, 0, 80},
		"long-id":  long,
		"empty-4a": {4, 1, 0, 80, 0, 0, 0, 1, 0, 0},
	} {
		if _, _, err := Parse(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, b := range captures {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := Parse(b)
		if err != nil {
			return
		}
		if n > len(b) || r.Addr() == "" {
			t.Fatalf("n=%d of %d, %+v", n, len(b), r)
		}
		for i := 0; i < n; i++ {
			if _, _, err := Parse(b[:i]); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("prefix %d of a valid request: %v", i, err)
			}
		}
	})
}
