package foo

import "testing"

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
		err := st.Observe(b[:at])
		if err == nil {
			err = st.Observe(b[at:])
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
