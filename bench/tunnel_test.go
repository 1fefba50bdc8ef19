package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp/stream"
	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4amqpstream"
)

// tunnelBytes is echoed per path and iteration; rttRounds round trips of
// rttSize bytes measure latency.
const (
	tunnelBytes = 32 << 20
	rttRounds   = 200
	rttSize     = 64
)

// BenchmarkTunnel compares, in every iteration, an echo reached four ways:
// direct TCP; an amqp/stream stream (the library, no Caddy); the reference
// design (amqp-stream's protocol: one unconfirmed message per Write, an
// auto-ack consumer, no window), implemented here from its description in
// shared/reference/amqp-stream.md; and TCP through Caddy's amqp_tunnel
// handler to an amqp/ listener whose route proxies to the echo server. It
// reports MB/s of a 32 MiB echo and the median round trip of 64 bytes.
func BenchmarkTunnel(b *testing.B) {
	e2e.RequireRabbit(b)
	echo := startTCPEcho(b)
	conn := func() *amqp091.Connection {
		c, err := amqp091.Dial(e2e.URL(e2e.RabbitAddr, "/"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = c.Close() })
		return c
	}
	dconn, lconn := conn(), conn()
	queue := fmt.Sprintf("prelude-bench-%d", time.Now().UnixNano())
	ln, err := stream.ListenAMQP(lconn, queue)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ln.Close() })
	go serveEcho(ln)
	refQueue := queue + "-ref"
	refLn := refListen(b, lconn, refQueue)
	go serveEcho(refLn)

	port, tq := e2e.FreePort(b), queue+"-caddy"
	startBenchCaddy(b, map[string]any{"apps": map[string]any{
		"amqp_brokers": map[string]any{"brokers": map[string]any{"main": map[string]any{"url": e2e.URL(e2e.RabbitAddr, "/")}}},
		"layer4": map[string]any{"servers": map[string]any{
			"tunnel": map[string]any{"listen": []string{port}, "routes": []any{map[string]any{
				"handle": []any{map[string]any{"handler": "amqp_tunnel", "broker": "main", "queue": tq}}}}},
			"far": map[string]any{"listen": []string{"amqp/" + tq + "@main"}, "routes": []any{map[string]any{
				"handle": []any{map[string]any{"handler": "proxy", "upstreams": []any{map[string]any{"dial": []string{echo}}}}}}}},
		}},
	}})
	paths := []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"direct", func() (net.Conn, error) { return net.Dial("tcp", echo) }},
		{"stream", func() (net.Conn, error) { return stream.DialAMQP(context.Background(), dconn, queue) }},
		{"reference", func() (net.Conn, error) { return refDial(dconn, refQueue) }},
		{"caddy", func() (net.Conn, error) { return net.Dial("tcp", port) }},
	}
	waitEcho(b, paths[3].dial)
	elapsed := map[string]time.Duration{}
	rtts := map[string][]time.Duration{}
	payload := bytes.Repeat([]byte("0123456789abcdef"), tunnelBytes/16)
	b.SetBytes(int64(len(paths)) * tunnelBytes)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			c, err := p.dial()
			if err != nil {
				b.Fatalf("%s: %v", p.name, err)
			}
			d, err := echoBulk(c, payload)
			if err != nil {
				b.Fatalf("%s bulk: %v", p.name, err)
			}
			elapsed[p.name] += d
			r, err := pingPong(c)
			if err != nil {
				b.Fatalf("%s ping-pong: %v", p.name, err)
			}
			rtts[p.name] = append(rtts[p.name], r...)
			_ = c.Close()
		}
	}
	b.StopTimer()
	rate, rtt := map[string]float64{}, map[string]float64{}
	for _, p := range paths {
		rate[p.name] = float64(b.N) * tunnelBytes / elapsed[p.name].Seconds() / 1e6
		s := rtts[p.name]
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		rtt[p.name] = float64(s[len(s)/2]) / float64(time.Microsecond)
		b.ReportMetric(rate[p.name], p.name+"-MB/s")
		b.ReportMetric(rtt[p.name], p.name+"-rtt-µs")
	}
	b.ReportMetric(rate["stream"]/rate["direct"], "stream/direct-MB/s")
	b.ReportMetric(rate["stream"]/rate["reference"], "stream/reference-MB/s")
	b.ReportMetric(rate["caddy"]/rate["direct"], "caddy/direct-MB/s")
	b.ReportMetric(rtt["stream"]/rtt["direct"], "stream/direct-rtt")
	b.ReportMetric(rtt["stream"]/rtt["reference"], "stream/reference-rtt")
	b.ReportMetric(rtt["caddy"]/rtt["direct"], "caddy/direct-rtt")
}

// echoBulk writes payload while reading its echo, and times it.
func echoBulk(c net.Conn, payload []byte) (time.Duration, error) {
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, 256<<10)
	var n int
	for n < len(payload) {
		k, err := c.Read(got)
		if k > 0 && !bytes.Equal(got[:k], payload[n:n+k]) {
			return 0, fmt.Errorf("echo differs at byte %d", n)
		}
		n += k
		if err != nil {
			return 0, fmt.Errorf("after %d bytes: %w", n, err)
		}
	}
	return time.Since(start), <-errc
}

func pingPong(c net.Conn) ([]time.Duration, error) {
	out := make([]time.Duration, 0, rttRounds)
	msg, buf := bytes.Repeat([]byte("p"), rttSize), make([]byte, rttSize)
	for range rttRounds {
		start := time.Now()
		if _, err := c.Write(msg); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return nil, err
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}

func startTCPEcho(b *testing.B) string {
	return e2e.ServeTCP(b, func(c net.Conn) { _, _ = io.Copy(c, c) })
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
	}
}

// waitEcho waits until dial reaches an echo (the amqp/ listener consumes
// its queue asynchronously after Caddy starts).
func waitEcho(b *testing.B, dial func() (net.Conn, error)) {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := dial()
		if err != nil {
			continue
		}
		_, _ = c.Write([]byte("x"))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		_, err = io.ReadFull(c, make([]byte, 1))
		_ = c.Close()
		if err == nil {
			return
		}
	}
	b.Fatal("the tunnel never echoed")
}
