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
	in, out := c.Stream(FromClient, 1<<16), c.Stream(FromServer, 1<<16)
	b.SetBytes(int64(len(reqs) + len(answers)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_ = in.Observe(reqs)
		_ = out.Observe(answers)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*2*lines), "ns/msg")
}
