package foo

import (
	"fmt"
	"testing"
)

// BenchmarkAnalyze measures the analyser's cost per message: a chunk of
// pipelined requests from the client, then their answers (88% ACK) from
// the server, each as one read.
func BenchmarkAnalyze(b *testing.B) {
	const lines = 170 // about one 4 KiB read
	var reqs, answers []byte
	for i := 1; i <= lines; i++ {
		reqs = fmt.Appendf(reqs, "REQ %d abcdefghijklmnop\n", i)
		if i%8 == 0 {
			answers = fmt.Appendf(answers, "NAK %d %032x\n", i, i)
		} else {
			answers = fmt.Appendf(answers, "ACK %d\n", i)
		}
	}
	s := NewStats(nil)
	c := s.Open()
	in, out := NewScanner(1<<16), NewScanner(1<<16)
	b.SetBytes(int64(len(reqs) + len(answers)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c.Begin(FromClient)
		_ = in.Feed(reqs, c.ClientLine)
		c.Flush(FromClient)
		c.Begin(FromServer)
		_ = out.Feed(answers, c.ServerLine)
		c.Flush(FromServer)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*2*lines), "ns/msg")
}
