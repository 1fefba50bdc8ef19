package foo

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzObserve checks that a Stream, fed the bytes in two cuts, counts
// exactly what the line-by-line path counts: Scanner.Feed then
// ClientLine/ServerLine, stopping at the same too-long line.
func FuzzObserve(f *testing.F) {
	f.Add([]byte("REQ 1 abcd\nREQ 2 efgh\nACK 1\nNAK 2 00ff\n"), uint16(7), true)
	f.Add([]byte("AC\nK 1\nREQ \nREQ 18446744073709551616 x\nACK 007\nREQ 1"), uint16(3), false)
	f.Fuzz(func(t *testing.T, b []byte, cut uint16, fromServer bool) {
		const max = 24
		d := Direction(fromServer)
		fast := NewStats(nil).Open()
		st := fast.Stream(d, max)
		at := int(cut) % (len(b) + 1)
		fed := b[:at]
		err := st.Observe(fed)
		if err == nil {
			fed = b[at:]
			err = st.Observe(fed)
		}
		if err != nil {
			checkTooLong(t, err, fed, max)
		}
		if err == nil {
			st.End()
		}

		slow := NewStats(nil).Open()
		observe := slow.ClientLine
		if fromServer {
			observe = slow.ServerLine
		}
		sc := NewScanner(max)
		serr := sc.Feed(b[:at], observe)
		if serr == nil {
			serr = sc.Feed(b[at:], observe)
		}
		if serr == nil {
			sc.Flush(observe)
		}

		if (err == nil) != (serr == nil) {
			t.Fatalf("errors differ: %v, line by line %v", err, serr)
		}
		got, want := fast.s.Report(), slow.s.Report()
		if got.MsgReq != want.MsgReq || got.MsgAck != want.MsgAck || got.MsgNak != want.MsgNak ||
			got.InvalidLines != want.InvalidLines || fast.pending.live != slow.pending.live {
			t.Fatalf("counts differ: %+v (%d pending), line by line %+v (%d)", got, fast.pending.live, want, slow.pending.live)
		}
	})
}

// checkTooLong checks a LineTooLongError against the bytes fed to the call
// that returned it: complete lines before Start, and from Start on a line
// with no LF within max bytes (or, Begun, the rest of an earlier one).
func checkTooLong(t *testing.T, err error, fed []byte, max int) {
	t.Helper()
	var long *LineTooLongError
	if !errors.As(err, &long) || !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("error %v, want a *LineTooLongError", err)
	}
	if long.Start < 0 || long.Start > len(fed) || long.Start > 0 && fed[long.Start-1] != '\n' || long.Begun && long.Start != 0 {
		t.Fatalf("%+v in %q: not at a line start", long, fed)
	}
	if i := bytes.IndexByte(fed[long.Start:], '\n'); !long.Begun && i >= 0 && i <= max {
		t.Fatalf("%+v in %q: the line there is not over %d bytes", long, fed, max)
	}
}

// TestLineTooLongSaysWhereItStarts: the complete lines before a line over
// the limit are counted and their length reported, whether the long line
// starts in this read or began in an earlier one.
func TestLineTooLongSaysWhereItStarts(t *testing.T) {
	for _, tc := range []struct {
		reads []string
		start int
		begun bool
		req   uint64
	}{
		{[]string{"REQ 1 a\nREQ 2 0123456789x\n"}, 8, false, 1},
		{[]string{"REQ 1 a\nREQ 2 01", "23456789x\n"}, 0, true, 1},
		{[]string{"REQ 1 a\nREQ", " 2 b\nREQ 3 0123456789\n"}, 5, false, 2},
		{[]string{"REQ 1 0123456789\n"}, 0, false, 0},
	} {
		st := NewStats(nil).Open().Stream(FromClient, 10)
		var err error
		for _, r := range tc.reads {
			if err = st.Observe([]byte(r)); err != nil {
				break
			}
		}
		var long *LineTooLongError
		if !errors.As(err, &long) || long.Start != tc.start || long.Begun != tc.begun {
			t.Errorf("%q: %#v, want start %d begun %v", tc.reads, err, tc.start, tc.begun)
		}
		if got := st.c.s.Report().MsgReq; got != tc.req {
			t.Errorf("%q: %d requests counted, want %d", tc.reads, got, tc.req)
		}
	}
}
