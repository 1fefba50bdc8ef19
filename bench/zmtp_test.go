package bench

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4zmtp"
	"github.com/caddyprelude/prelude/zmtp"
)

// nullGreeting is a ZMTP 3.1 NULL greeting.
func nullGreeting() []byte {
	g := append(zmtp.Signature(), 3, 1)
	g = append(g, "NULL"...)
	return append(g, make([]byte, zmtp.GreetingLen-len(g))...)
}

// readyFrame is a READY command with Socket-Type DEALER.
func readyFrame() []byte {
	body := []byte{5, 'R', 'E', 'A', 'D', 'Y', 11}
	body = append(body, "Socket-Type"...)
	body = binary.BigEndian.AppendUint32(body, 6)
	body = append(body, "DEALER"...)
	return append([]byte{zmtp.FlagCommand, byte(len(body))}, body...)
}

// zmtpHandshake exchanges greetings and READY commands (NULL mechanism).
func zmtpHandshake(c net.Conn) error {
	if _, err := c.Write(append(nullGreeting(), readyFrame()...)); err != nil {
		return err
	}
	peer := make([]byte, zmtp.GreetingLen+len(readyFrame()))
	_, err := io.ReadFull(c, peer)
	return err
}

// startEchoWorker is a ZMTP NULL worker that echoes every frame: a Go
// peer at full speed, so that the proxies are what is measured.
func startEchoWorker(b *testing.B) string {
	return e2e.ServeTCP(b, func(c net.Conn) {
		if zmtpHandshake(c) == nil {
			_, _ = io.Copy(c, c) // frames come back unchanged
		}
	})
}

// frame64K is one long frame carrying 64 KiB.
func frame64K() []byte {
	f := []byte{zmtp.FlagLong}
	f = binary.BigEndian.AppendUint64(f, 64<<10)
	return append(f, make([]byte, 64<<10)...)
}

// BenchmarkZMTP measures, per path, MB/s of 64 KiB messages pipelined
// through an echoing worker (counting both directions), and round trips/s
// of 1-byte messages, one path after the other in every iteration.
func BenchmarkZMTP(b *testing.B) {
	worker := startEchoWorker(b)
	prelude, l4proxy := e2e.FreePort(b), e2e.FreePort(b)
	startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"prelude": map[string]any{"listen": []string{prelude}, "routes": []any{map[string]any{
			"match":  []any{map[string]any{"zmtp": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "zmtp", "to": []string{worker}}},
		}}},
		"l4proxy": map[string]any{"listen": []string{l4proxy}, "routes": []any{map[string]any{
			"handle": []any{map[string]any{"handler": "proxy",
				"upstreams": []any{map[string]any{"dial": []string{worker}}}}},
		}}},
	}}}})
	p := paths{direct: worker, prelude: prelude, l4proxy: l4proxy}
	const messages, roundTrips = 1000, 2000
	msg := frame64K()
	small := []byte{0, 1, 'x'}
	streamTime, rttTime := map[string]time.Duration{}, map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, path := range p.each() {
			c, err := net.Dial("tcp", path[1])
			if err != nil {
				b.Fatal(err)
			}
			if err := zmtpHandshake(c); err != nil {
				b.Fatalf("%s handshake: %v", path[0], err)
			}
			start := time.Now()
			errc := make(chan error, 1)
			go func() {
				for k := 0; k < messages; k++ {
					if _, err := c.Write(msg); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			if _, err := io.CopyN(io.Discard, c, int64(messages*len(msg))); err != nil {
				b.Fatalf("%s stream: %v", path[0], err)
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			streamTime[path[0]] += time.Since(start)
			start = time.Now()
			buf := make([]byte, len(small))
			for k := 0; k < roundTrips; k++ {
				if _, err := c.Write(small); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
			rttTime[path[0]] += time.Since(start)
			_ = c.Close()
		}
	}
	b.StopTimer()
	mbps, rtps := map[string]float64{}, map[string]float64{}
	for name := range streamTime {
		mbps[name] = float64(b.N) * 2 * messages * float64(len(msg)) / streamTime[name].Seconds() / 1e6
		rtps[name] = float64(b.N) * roundTrips / rttTime[name].Seconds()
		b.ReportMetric(mbps[name], name+"-MB/s")
		b.ReportMetric(rtps[name], name+"-rt/s")
	}
	b.ReportMetric(mbps["prelude"]/mbps["direct"], "prelude/direct-MB/s")
	b.ReportMetric(rtps["prelude"]/rtps["direct"], "prelude/direct-rt/s")
	b.ReportMetric(mbps["l4proxy"]/mbps["direct"], "l4proxy/direct-MB/s")
}
