package stream

import (
	"bytes"
	"testing"
	"time"
)

// testConn is a Conn with no broker behind it, for feeding deliveries.
func testConn() *Conn {
	c := newConn(Config{}.withDefaults(), nil, nil, Addr{"local"}, Addr{"remote"}, token{1, 2, 3}, token{4, 5, 6}, 1<<20)
	c.cfg.lose = func([]byte) bool { return true }
	return c
}

func dataMsg(tok token, seq uint64, payload string, flags uint16) []byte {
	b := appendHeader(nil, header{kind: kindData, flags: flags, token: tok, seq: seq, limit: 1 << 20})
	return append(b, payload...)
}

func queued(c *Conn) string {
	var b bytes.Buffer
	for _, p := range c.rq {
		b.Write(p)
	}
	return b.String()
}

// TestReceiverExactlyOnce: redelivered, overlapping and early messages
// leave the byte stream exact.
func TestReceiverExactlyOnce(t *testing.T) {
	c := testConn()
	tok := c.myToken
	steps := []struct {
		msg        []byte
		want       string
		duplicates uint64
	}{
		{dataMsg(tok, 0, "abc", 0), "abc", 0},
		{dataMsg(tok, 0, "abc", 0), "abc", 1},         // redelivered
		{dataMsg(tok, 1, "bcdef", 0), "abcdef", 1},    // retransmitted with other boundaries
		{dataMsg(tok, 10, "xyz", 0), "abcdef", 2},     // past a gap: dropped
		{dataMsg(tok, 6, "ghij", 0), "abcdefghij", 2}, // the gap filled
		{dataMsg(token{9}, 10, "EVIL", 0), "abcdefghij", 2},
		{dataMsg(tok, 10, "", flagFIN), "abcdefghij", 2},
		{dataMsg(tok, 10, "late", 0), "abcdefghij", 3}, // after FIN
	}
	for i, s := range steps {
		c.handleDelivery(s.msg)
		if got := queued(c); got != s.want || c.stats.Duplicates != s.duplicates {
			t.Fatalf("step %d: stream %q dups %d, want %q dups %d", i, got, c.stats.Duplicates, s.want, s.duplicates)
		}
	}
	if !c.rfin || c.rnxt != 11 || c.stats.Rejected != 1 || !c.gapSeen && !c.ackNow {
		t.Fatalf("rfin %v rnxt %d rejected %d", c.rfin, c.rnxt, c.stats.Rejected)
	}
}

// TestSenderGoBack: a gap report rewinds to the oldest unacknowledged
// byte once, and the resent message starts there.
func TestSenderGoBack(t *testing.T) {
	c := testConn()
	c.bufferSend(bytes.Repeat([]byte("x"), 3*c.cfg.MessageSize))
	c.end = uint64(3 * c.cfg.MessageSize)
	now := time.Now()
	for range 3 {
		if c.nextData(nil, now) == nil {
			t.Fatal("no data to send")
		}
	}
	ack := appendHeader(nil, header{kind: kindAck, flags: flagGap, token: c.myToken, ack: uint64(c.cfg.MessageSize), limit: 1 << 20})
	c.handleDelivery(ack)
	c.handleDelivery(ack) // a second report while recovering: no second rewind
	if c.nxt != uint64(c.cfg.MessageSize) || c.stats.Retransmits != 1 {
		t.Fatalf("nxt %d retransmits %d after a gap report", c.nxt, c.stats.Retransmits)
	}
	h, payload, err := parseMessage(c.nextData(nil, now))
	if err != nil || h.seq != uint64(c.cfg.MessageSize) || len(payload) != c.cfg.MessageSize {
		t.Fatalf("resent seq %d len %d: %v", h.seq, len(payload), err)
	}
}

// FuzzDelivery feeds arbitrary message bodies to a stream end whose token
// the fuzzer may guess from the seeds: no input panics, and what the end
// buffers never exceeds its window.
func FuzzDelivery(f *testing.F) {
	c0 := testConn()
	f.Add(dataMsg(c0.myToken, 0, "hello", 0))
	f.Add(dataMsg(c0.myToken, 0, "", flagFIN))
	f.Add(appendHeader(nil, header{kind: kindAck, flags: flagGap, token: c0.myToken, ack: 5, limit: 9}))
	f.Add(appendHeader(nil, header{kind: kindReset, token: c0.myToken}))
	f.Add([]byte("AMQP\x00\x00\x09\x01"))
	f.Fuzz(func(t *testing.T, body []byte) {
		c := testConn()
		for len(body) > 0 {
			n := min(len(body), headerLen+64)
			c.handleDelivery(body[:n])
			body = body[n:]
		}
		if c.rqLen > c.cfg.Window {
			t.Fatalf("buffered %d bytes, window %d", c.rqLen, c.cfg.Window)
		}
	})
}
