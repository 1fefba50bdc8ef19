// Package footest is a Foo server and client for tests and benchmarks: the
// reference proxy's traffic (sequential REQs, ~88% ACK, NAK with 32 hex
// chars) and the cases it failed on (pipelining, out-of-order answers,
// server-first lines, lines split across writes, a last line without LF).
package footest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/foo"
)

// ServerOptions choose the server's behaviour.
type ServerOptions struct {
	Greeting   string // a line sent before reading anything (server speaks first)
	Reverse    int    // answer requests in reversed batches of this size
	SplitWrite bool   // write each answer in two writes
	// FlushEach writes every answer with its own write(2), as a server
	// answering line by line does. Otherwise the server answers every
	// request it has read, then flushes once, before reading again.
	FlushEach bool
}

// Server answers REQ n with ACK n (about 88%) or NAK n <32 hex>.
type Server struct {
	Addr string
	opts ServerOptions
}

// StartServer serves until the test ends.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	s := &Server{Addr: ln.Addr().String(), opts: opts}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(c)
		}
	}()
	return s
}

func (s *Server) serve(c net.Conn) {
	defer c.Close()
	w := bufio.NewWriter(c)
	if s.opts.Greeting != "" {
		_, _ = w.WriteString(s.opts.Greeting + "\n")
		_ = w.Flush()
	}
	r := bufio.NewReader(c)
	var batch []uint64
	var line, out []byte
	answer := func(seq uint64) {
		out = append(out[:0], "ACK "...)
		out = strconv.AppendUint(out, seq, 10)
		if rand.IntN(100) >= 88 {
			out[0], out[1], out[2] = 'N', 'A', 'K'
			out = appendNAKData(out, rand.Uint64())
		}
		out = append(out, '\n')
		if s.opts.SplitWrite {
			_, _ = w.Write(out[:len(out)/2])
			_ = w.Flush()
			out = out[len(out)/2:]
		}
		_, _ = w.Write(out)
		if s.opts.FlushEach {
			_ = w.Flush()
		}
	}
	for {
		var err error
		line, err = readLine(r, line[:0])
		if m, perr := foo.ParseLine(bytes.TrimSuffix(line, []byte{'\n'})); perr == nil && m.Type == foo.REQ {
			batch = append(batch, m.Seq)
		}
		if len(batch) > 0 && (s.opts.Reverse > 0 && len(batch) >= s.opts.Reverse || !lineBuffered(r) || err != nil) {
			if s.opts.Reverse > 0 {
				slices.Reverse(batch)
			}
			for _, seq := range batch {
				answer(seq)
			}
			batch = batch[:0]
			_ = w.Flush()
		}
		if err != nil {
			return
		}
	}
}

// readLine appends the next line, LF included, to buf; at EOF the last
// bytes without LF.
func readLine(r *bufio.Reader, buf []byte) ([]byte, error) {
	for {
		b, err := r.ReadSlice('\n')
		buf = append(buf, b...)
		if err != bufio.ErrBufferFull {
			return buf, err
		}
	}
}

// appendNAKData appends " " and 32 hex digits.
func appendNAKData(b []byte, x uint64) []byte {
	b = append(b, " 0000000000000000"...)
	const hex = "0123456789abcdef"
	for shift := 60; shift >= 0; shift -= 4 {
		b = append(b, hex[x>>uint(shift)&0xf])
	}
	return b
}

// lineBuffered reports whether r holds a complete line: the server answers
// every request it can read without blocking, then flushes.
func lineBuffered(r *bufio.Reader) bool {
	b, _ := r.Peek(r.Buffered())
	return bytes.IndexByte(b, '\n') >= 0
}

// Counts are what a client saw.
type Counts struct{ Req, Ack, Nak int }

// ClientOptions choose the client's behaviour.
type ClientOptions struct {
	Requests   int
	Pipelined  bool // send every REQ before reading answers
	SplitWrite bool // write each REQ in two writes
	NoFinalLF  bool // the last REQ has no LF (then the client half-closes)
	// Dial opens the connection instead of a plain TCP dial to addr (TLS,
	// say); the connection must have CloseWrite for NoFinalLF.
	Dial func(addr string) (net.Conn, error)
}

// Run sends the requests over one connection and counts the answers.
func Run(addr string, o ClientOptions) (Counts, error) {
	dial := o.Dial
	if dial == nil {
		dial = func(addr string) (net.Conn, error) { return net.Dial("tcp", addr) }
	}
	c, err := dial(addr)
	if err != nil {
		return Counts{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	var counts Counts
	var mu sync.Mutex
	r := bufio.NewReader(c)
	read := func(n int) error {
		for i := 0; i < n; i++ {
			line, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("after %d answers: %w", i, err)
			}
			m, err := foo.ParseLine([]byte(strings.TrimSuffix(line, "\n")))
			if err != nil {
				i-- // not an answer (a greeting)
				continue
			}
			mu.Lock()
			if m.Type == foo.ACK {
				counts.Ack++
			} else if m.Type == foo.NAK {
				counts.Nak++
			}
			mu.Unlock()
		}
		return nil
	}
	send := func(i int) error {
		line := fmt.Sprintf("REQ %d %s", i, strings.Repeat("x", 4+rand.IntN(29)))
		if !(o.NoFinalLF && i == o.Requests) {
			line += "\n"
		}
		var err error
		if o.SplitWrite {
			if _, err = io.WriteString(c, line[:len(line)/2]); err == nil {
				_, err = io.WriteString(c, line[len(line)/2:])
			}
		} else {
			_, err = io.WriteString(c, line)
		}
		counts.Req++
		return err
	}
	for i := 1; i <= o.Requests; i++ {
		if err := send(i); err != nil {
			return counts, err
		}
		if !o.Pipelined && !(o.NoFinalLF && i == o.Requests) {
			if err := read(1); err != nil {
				return counts, err
			}
		}
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok && o.NoFinalLF {
		_ = cw.CloseWrite()
	}
	if o.Pipelined {
		return counts, read(o.Requests)
	}
	if o.NoFinalLF {
		return counts, read(1)
	}
	return counts, nil
}

// Load opens conns connections to addr and sends perConn pipelined
// requests on each, reading answers concurrently. It returns the messages
// exchanged (requests plus answers) and how long it took.
func Load(addr string, conns, perConn int) (int, time.Duration, error) {
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- loadOne(addr, perConn)
		}()
	}
	wg.Wait()
	took := time.Since(start)
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, took, err
		}
	}
	return 2 * conns * perConn, took, nil
}

// loadReadBuffer is the receive buffer of a Load connection.
const loadReadBuffer = 1 << 20

func loadOne(addr string, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	// A fixed receive buffer. With the autotuned one, a sender holding
	// more than one loopback segment (up to 64 KiB) for this client
	// stalled now and then: the client had read everything, yet the
	// sender still saw a window smaller than a segment and sent nothing
	// until its persist timer fired, 200 ms later (seen with ss). Proxies,
	// which queue answers in bulk, hit that; a server writing small
	// batches rarely does (BENCHMARKS.md, Foo messages).
	_ = c.(*net.TCPConn).SetReadBuffer(loadReadBuffer)
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	werr := make(chan error, 1)
	go func() {
		w := bufio.NewWriterSize(c, 64<<10)
		var line []byte
		for i := 1; i <= n; i++ {
			line = append(strconv.AppendUint(append(line[:0], "REQ "...), uint64(i), 10), " abcdefghijklmnop\n"...)
			if _, err := w.Write(line); err != nil {
				werr <- err
				return
			}
		}
		werr <- w.Flush()
	}()
	r := bufio.NewReaderSize(c, 64<<10)
	for got := 0; got < n; got++ {
		if _, err := r.ReadSlice('\n'); err != nil {
			return fmt.Errorf("after %d of %d answers: %w", got, n, err)
		}
	}
	return <-werr
}
