package foo

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseLine(t *testing.T) {
	ok := map[string]Msg{
		"REQ 1 hello":                    {Type: REQ, Seq: 1, Data: []byte("hello")},
		"ACK 42":                         {Type: ACK, Seq: 42},
		"NAK 7 0123456789abcdef0123":     {Type: NAK, Seq: 7, Data: []byte("0123456789abcdef0123")},
		"REQ 18446744073709551615 x y z": {Type: REQ, Seq: 18446744073709551615, Data: []byte("x y z")},
		"REQ 3 ":                         {Type: REQ, Seq: 3, Data: []byte{}},
	}
	for in, want := range ok {
		got, err := ParseLine([]byte(in))
		if err != nil || got.Type != want.Type || got.Seq != want.Seq || !bytes.Equal(got.Data, want.Data) {
			t.Errorf("%q: %+v %v", in, got, err)
		}
	}
	for _, in := range []string{"", "RE", "REQ", "REQ ", "REQ x", "req 1", "FOO 1", "REQ1 x",
		"REQ 18446744073709551616", "REQ -1", "ACK  1", "AMQP\x00\x00\x09\x01", "GET / HTTP/1.1",
		"0032git-upload-pack /x", "SSH-2.0-x"} {
		if _, err := ParseLine([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%q parsed", in)
		}
	}
}

func TestMatchFirstLine(t *testing.T) {
	line := []byte("REQ 123 payload\n")
	for i := 0; i < len("REQ 123"); i++ {
		if _, _, err := MatchFirstLine(line[:i+1]); i < len("REQ 123")-1 && !errors.Is(err, ErrNeedMore) {
			t.Errorf("prefix %d: %v", i+1, err)
		}
	}
	if ok, seq, err := MatchFirstLine(line[:8]); !ok || seq != 123 || err != nil {
		t.Errorf("full head: %v %d %v", ok, seq, err)
	}
	if ok, seq, _ := MatchFirstLine([]byte("REQ 9\n")); !ok || seq != 9 {
		t.Error("REQ 9 LF")
	}
	for _, in := range []string{"ACK 1 ", "REQX", "REQ a", "REQ 12x", "GET /", "AMQP", "\x16\x03", "REQ 123456789012345678901"} {
		if ok, _, err := MatchFirstLine([]byte(in)); ok || err != nil {
			t.Errorf("%q: %v %v", in, ok, err)
		}
	}
}

// exchange is reference-style traffic: requests and answers, one per line.
const exchange = "REQ 1 abcd\nREQ 2 efghijklmnop\nACK 1\nNAK 2 0123456789abcdef0123456789abcdef\n"

func TestScannerEverySplit(t *testing.T) {
	want := strings.Split(strings.TrimSuffix(exchange, "\n"), "\n")
	for i := 0; i <= len(exchange); i++ {
		for j := i; j <= len(exchange); j++ {
			s := NewScanner(64)
			var got []string
			fn := func(l []byte) { got = append(got, string(l)) }
			for _, part := range []string{exchange[:i], exchange[i:j], exchange[j:]} {
				if err := s.Feed([]byte(part), fn); err != nil {
					t.Fatal(err)
				}
			}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("split at %d,%d: %q", i, j, got)
			}
		}
	}
}

func TestScannerFinalLineAndLimit(t *testing.T) {
	s := NewScanner(10)
	var got []string
	fn := func(l []byte) { got = append(got, string(l)) }
	_ = s.Feed([]byte("ACK 1\nACK 2"), fn)
	s.Flush(fn)
	if strings.Join(got, "|") != "ACK 1|ACK 2" {
		t.Fatalf("final line without LF: %q", got)
	}
	if err := NewScanner(10).Feed([]byte("REQ 1 0123456789\n"), fn); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("long line in one write: %v", err)
	}
	s = NewScanner(10)
	_ = s.Feed([]byte("REQ 1 01"), fn)
	if err := s.Feed([]byte("23456789"), fn); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("long line across writes: %v", err)
	}
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestRatesAreTruePerSecond(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s := NewStats(c.now)
	conn := s.Open()
	// 500 requests within one second (the reference reported 0.5/s).
	for i := 0; i < 500; i++ {
		if i > 0 {
			c.t = c.t.Add(2 * time.Millisecond)
		}
		conn.ClientLine([]byte("REQ " + itoa(i) + " x"))
	}
	r := s.Report()
	if r.RequestRate1s != 500 || r.RequestRate10s != 50 {
		t.Fatalf("rates %v/s over 1s, %v/s over 10s; want 500 and 50", r.RequestRate1s, r.RequestRate10s)
	}
	c.t = c.t.Add(1500 * time.Millisecond)
	if r := s.Report(); r.RequestRate1s != 0 || r.RequestRate10s != 50 {
		t.Fatalf("1.5 s later: %v and %v", r.RequestRate1s, r.RequestRate10s)
	}
	c.t = c.t.Add(10 * time.Second)
	if r := s.Report(); r.RequestRate10s != 0 || r.MsgReq != 500 {
		t.Fatalf("after the window: %+v", r)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestDirectionAndLatency(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s := NewStats(c.now)
	conn := s.Open()
	conn.ServerLine([]byte("HELLO from server")) // server-first, not a message
	conn.ClientLine([]byte("REQ 1 a"))
	conn.ClientLine([]byte("REQ 2 b"))
	conn.ClientLine([]byte("ACK 2")) // wrong direction
	c.t = c.t.Add(30 * time.Millisecond)
	conn.ServerLine([]byte("NAK 2 ff")) // out of order
	c.t = c.t.Add(20 * time.Millisecond)
	conn.ServerLine([]byte("ACK 1"))
	conn.ServerLine([]byte("REQ 3")) // wrong direction
	r := s.Report()
	if r.MsgReq != 2 || r.MsgAck != 1 || r.MsgNak != 1 || r.MsgTotal != 4 || r.InvalidLines != 3 || r.ActiveConns != 1 {
		t.Fatalf("%+v", r)
	}
	if r.LatencySamples != 2 || r.LatencyP50ms != 50 || r.LatencyP99ms != 50 {
		t.Fatalf("latency %+v", r)
	}
	conn.Close()
	if s.Report().ActiveConns != 0 {
		t.Fatal("active after close")
	}
}

func TestSnapshotRoundTripAndAge(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	s := NewStats(c.now)
	conn := s.Open()
	for i := 0; i < 30; i++ {
		conn.ClientLine([]byte("REQ 1 x"))
		conn.ServerLine([]byte("ACK 1"))
		c.t = c.t.Add(10 * time.Millisecond)
	}
	b, err := MarshalSnapshot(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	sn, err := UnmarshalSnapshot(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		age           time.Duration
		rate1, rate10 float64
	}{{200 * time.Millisecond, 30, 3}, {5 * time.Second, 0, 3}, {11 * time.Second, 0, 0}} {
		c2 := &clock{t: c.t.Add(tc.age)}
		fresh := NewStats(c2.now)
		fresh.Restore(sn)
		r := fresh.Report()
		if r.MsgReq != 30 || r.MsgAck != 30 || r.RequestRate1s != tc.rate1 || r.RequestRate10s != tc.rate10 {
			t.Errorf("restored %v later: %+v, want rates %v and %v", tc.age, r, tc.rate1, tc.rate10)
		}
	}
	for _, bad := range []string{"", "{", `{"version":1}`, string(b[:len(b)/2]), `{"version":2,"request_buckets":[]}`} {
		if _, err := UnmarshalSnapshot([]byte(bad)); !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	s := NewStats(nil)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.Open()
			defer c.Close()
			for i := 0; i < 1000; i++ {
				c.ClientLine([]byte("REQ 5 x"))
				c.ServerLine([]byte("ACK 5"))
				_ = s.Report()
				_ = s.Snapshot()
			}
		}()
	}
	wg.Wait()
	if r := s.Report(); r.MsgReq != 8000 || r.MsgAck != 8000 {
		t.Fatalf("%+v", r)
	}
}

// referenceParse is the grammar spelled out with the standard library, for
// the fuzz test to check ParseLine against.
func referenceParse(line []byte) (Msg, bool) {
	typ, rest, ok := bytes.Cut(line, []byte{' '})
	types := map[string]Type{"REQ": REQ, "ACK": ACK, "NAK": NAK}
	if !ok || types[string(typ)] == 0 {
		return Msg{}, false
	}
	seq, data, hasData := bytes.Cut(rest, []byte{' '})
	if len(seq) == 0 || strings.TrimLeft(string(seq), "0123456789") != "" {
		return Msg{}, false
	}
	n, err := strconv.ParseUint(string(seq), 10, 64)
	if err != nil || len(seq) > 20 {
		return Msg{}, false
	}
	m := Msg{Type: types[string(typ)], Seq: n}
	if hasData {
		m.Data = data
	}
	return m, true
}

func FuzzLines(f *testing.F) {
	f.Add([]byte(exchange))
	f.Add([]byte("REQ 1"))
	f.Add([]byte("AMQP\x00\x00\x09\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s := NewStats(nil)
		c := s.Open()
		in, out := NewScanner(256), NewScanner(256)
		_ = in.Feed(b, c.ClientLine)
		in.Flush(c.ClientLine)
		_ = out.Feed(b, c.ServerLine) // answers to what was just asked
		out.Flush(c.ServerLine)
		_, _, _ = MatchFirstLine(b)
		line, _, _ := bytes.Cut(b, []byte{'\n'})
		m, err := ParseLine(line)
		if want, ok := referenceParse(line); ok != (err == nil) || ok && (want.Type != m.Type || want.Seq != m.Seq || !bytes.Equal(want.Data, m.Data)) {
			t.Fatalf("ParseLine(%q) = %+v, %v; want %+v", line, m, err, want)
		}
		_ = s.Report()
		if sn, err := UnmarshalSnapshot(b); err == nil {
			s.Restore(sn)
		}
	})
}
