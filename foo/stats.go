package foo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Stats is one named set of Foo counters, shared by every connection that
// reports to it. All methods are safe for concurrent use.
type Stats struct {
	now func() time.Time

	req, ack, nak, invalid atomic.Uint64
	proxyNAKs              atomic.Uint64
	active                 atomic.Int64
	requests, responses    Window

	latMu sync.Mutex
	lat   [latencySamples]time.Duration
	latN  int // samples written so far (the ring holds the last latencySamples)
}

// latencySamples is how many recent request->response latencies the
// percentiles are computed from.
const latencySamples = 4096

// maxOutstanding bounds the requests one connection tracks for latency:
// as many as the latency ring holds. A deeper pipeline is sampled: requests
// beyond it get no latency until earlier ones are answered.
const maxOutstanding = latencySamples

// NewStats returns empty stats; now may be nil for time.Now.
func NewStats(now func() time.Time) *Stats {
	if now == nil {
		now = time.Now
	}
	return &Stats{now: now}
}

// Conn analyses one proxied connection: lines from the client must be REQ,
// lines from the server ACK or NAK; anything else is counted invalid.
//
// Bytes are observed through a Stream per direction. The lines of one
// Stream.Observe are one batch: they share a timestamp (they arrived in one
// read) and reach the shared Stats in one update, so that many connections
// do not contend per line. ClientLine and ServerLine observe a single line.
// One goroutine per direction may use a Conn.
type Conn struct {
	s       *Stats
	opened  time.Time
	mu      sync.Mutex // pending
	pending pending    // times are since opened
	client  side
	server  side
}

// side is one direction's batch: its counts, and the Seqs it saw —
// requests to remember (client side) or answers to match (server side).
type side struct {
	fromServer    bool
	now           time.Time
	req, ack, nak uint64
	invalid       uint64
	seqs          []uint64
	lat           []time.Duration // scratch for flushSeqs
}

// Open starts analysing a connection; Close it when the connection ends.
func (s *Stats) Open() *Conn {
	s.active.Add(1)
	return &Conn{s: s, opened: s.now(), server: side{fromServer: true}}
}

// Close ends the connection's analysis; the Conn must not be used after.
func (c *Conn) Close() {
	c.s.active.Add(-1)
	c.mu.Lock()
	c.pending.release()
	c.mu.Unlock()
}

// Direction names a side of the connection.
type Direction bool

// The two directions.
const (
	FromClient Direction = false
	FromServer Direction = true
)

func (c *Conn) side(d Direction) *side {
	if d == FromServer {
		return &c.server
	}
	return &c.client
}

// Stream observes the bytes of one direction as they flow, reassembling
// lines however the bytes are cut. Only one Stream per direction.
type Stream struct {
	c  *Conn
	sd *side
	sc Scanner
}

// Stream returns the observer of direction d, for lines of at most maxLine
// bytes (LF excluded).
func (c *Conn) Stream(d Direction, maxLine int) *Stream {
	return &Stream{c: c, sd: c.side(d), sc: Scanner{max: maxLine}}
}

// Observe analyses the complete lines in b as one batch and keeps a
// partial line for the next call. On a line over the limit it returns a
// *LineTooLongError (errors.Is ErrLineTooLong): the lines before the long
// one are counted and the long one is not; the caller counts it
// (Stats.Invalid) as it ends the connection.
func (st *Stream) Observe(b []byte) error { return st.ObserveAt(b, st.c.s.now()) }

// LineTooLongError says where in the observed bytes the line over the
// limit starts: b[:Start] are complete lines, all counted. Begun is true
// when the line started in an earlier call (its first bytes were in
// bytes observed before; Start is then 0).
type LineTooLongError struct {
	Start int
	Begun bool
}

func (e *LineTooLongError) Error() string        { return ErrLineTooLong.Error() }
func (e *LineTooLongError) Is(target error) bool { return target == ErrLineTooLong }

// ObserveAt is Observe for bytes read at now, for a caller that already
// read the clock (the Stats' own clock is not consulted).
func (st *Stream) ObserveAt(b []byte, now time.Time) error {
	sd := st.sd
	sd.now = now
	err := st.observe(b)
	st.c.flush(sd)
	return err
}

// observe counts the lines of b: a line begun in an earlier read through
// the scanner, then whole lines in place, then the scanner again for
// what observeWhole leaves (a partial or too long line).
func (st *Stream) observe(b []byte) error {
	all := len(b)
	tooLong := func(rest []byte) error {
		return &LineTooLongError{Start: all - len(rest), Begun: len(st.sc.partial) > 0}
	}
	if len(st.sc.partial) > 0 {
		line, rest, ok, err := st.sc.next(b)
		if err != nil {
			return tooLong(b)
		}
		if !ok {
			return nil
		}
		st.sd.observe(line)
		b = rest
	}
	b = st.sd.observeWhole(b, st.sc.max)
	for {
		line, rest, ok, err := st.sc.next(b)
		if err != nil {
			return tooLong(b)
		}
		if !ok {
			return nil
		}
		st.sd.observe(line)
		b = rest
	}
}

// observeWhole counts the complete lines at the start of b, parsing each in
// place, and returns the rest from the first line it leaves to the scanner:
// one without LF in b, or longer than max. It counts exactly as observe
// does line by line (FuzzObserve checks this).
func (sd *side) observeWhole(b []byte, max int) []byte {
	for {
		n := sd.observeLine(b, max)
		if n == 0 {
			return b
		}
		b = b[n:]
	}
}

// observeLine counts the line at the start of b and returns its length
// with the LF, or 0 if b holds no complete line of at most max bytes.
func (sd *side) observeLine(b []byte, max int) int {
	t, seq, end, ok := parseHead(b)
	lf := end
	if lf == len(b) || b[lf] != '\n' {
		i := bytes.IndexByte(b[end:], '\n')
		if i < 0 {
			return 0
		}
		lf += i
	}
	if lf > max {
		return 0
	}
	if !ok || (t == REQ) == sd.fromServer {
		sd.invalid++
		return lf + 1
	}
	switch t {
	case REQ:
		sd.req++
	case ACK:
		sd.ack++
	default:
		sd.nak++
	}
	sd.seqs = append(sd.seqs, seq)
	return lf + 1
}

// End observes a last line left without LF when the direction closed.
func (st *Stream) End() {
	if len(st.sc.partial) == 0 {
		return
	}
	st.sd.now = st.c.s.now()
	st.sd.observe(st.sc.partial)
	st.sc.partial = st.sc.partial[:0]
	st.c.flush(st.sd)
}

// observe counts one line into the batch.
func (sd *side) observe(line []byte) {
	t, seq, _, ok := parseHead(line)
	switch {
	case !ok || (t == REQ) == sd.fromServer:
		sd.invalid++
		return
	case t == REQ:
		sd.req++
	case t == ACK:
		sd.ack++
	default:
		sd.nak++
	}
	sd.seqs = append(sd.seqs, seq)
}

// flush adds a direction's batch to the shared stats and empties it.
func (c *Conn) flush(sd *side) {
	s := c.s
	if n := sd.req; n > 0 {
		s.req.Add(n)
		s.requests.Add(sd.now, n)
	}
	if n := sd.ack + sd.nak; n > 0 {
		s.ack.Add(sd.ack)
		s.nak.Add(sd.nak)
		s.responses.Add(sd.now, n)
	}
	if sd.invalid > 0 {
		s.invalid.Add(sd.invalid)
	}
	if len(sd.seqs) > 0 {
		c.flushSeqs(sd)
	}
	sd.req, sd.ack, sd.nak, sd.invalid, sd.seqs = 0, 0, 0, 0, sd.seqs[:0]
}

// flushSeqs records a batch of request Seqs, or matches a batch of answers
// against them for latency, under one lock per batch.
func (c *Conn) flushSeqs(sd *side) {
	lat := sd.lat[:0]
	now := max(sd.now.Sub(c.opened), 0)
	c.mu.Lock()
	for _, seq := range sd.seqs {
		if !sd.fromServer {
			c.pending.add(seq, now)
		} else if sent, ok := c.pending.take(seq); ok {
			lat = append(lat, now-sent)
		}
	}
	c.mu.Unlock()
	sd.lat = lat
	if len(lat) > 0 {
		s := c.s
		s.latMu.Lock()
		for _, l := range lat {
			s.lat[s.latN%latencySamples] = l
			s.latN++
		}
		s.latMu.Unlock()
	}
}

// ClientLine observes one line the client sent (without LF).
func (c *Conn) ClientLine(line []byte) { c.observeOne(&c.client, line) }

// ServerLine observes one line the server sent (without LF).
func (c *Conn) ServerLine(line []byte) { c.observeOne(&c.server, line) }

func (c *Conn) observeOne(sd *side, line []byte) {
	sd.now = c.s.now()
	sd.observe(line)
	c.flush(sd)
}

// Invalid counts a line that could not even be scanned (over the length
// limit).
func (s *Stats) Invalid() { s.invalid.Add(1) }

// ProxyNAKs counts NAKs the proxy itself sent to clients (no server
// reachable, no answer in time). They are not server answers: msg_nak does
// not include them.
func (s *Stats) ProxyNAKs(n int) { s.proxyNAKs.Add(uint64(n)) }

// Outstanding returns the Seqs of the connection's requests still awaiting
// an answer, in ascending order (at most 4096 are tracked).
func (c *Conn) Outstanding() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending.seqs()
}

// AtLineStart reports whether the stream is between lines: nothing of a
// line has been observed without its LF.
func (st *Stream) AtLineStart() bool { return len(st.sc.partial) == 0 }

// Report is the stats JSON: the reference proxy's field names, plus what it
// lacked. Rates are messages per second.
type Report struct {
	MsgTotal        uint64  `json:"msg_total"`
	MsgReq          uint64  `json:"msg_req"`
	MsgAck          uint64  `json:"msg_ack"`
	MsgNak          uint64  `json:"msg_nak"`
	RequestRate1s   float64 `json:"request_rate_1s"`
	RequestRate10s  float64 `json:"request_rate_10s"`
	ResponseRate1s  float64 `json:"response_rate_1s"`
	ResponseRate10s float64 `json:"response_rate_10s"`
	InvalidLines    uint64  `json:"invalid_lines"`
	ProxyNAKs       uint64  `json:"proxy_naks"`
	ActiveConns     int64   `json:"active_connections"`
	LatencyP50ms    float64 `json:"latency_p50_ms"`
	LatencyP90ms    float64 `json:"latency_p90_ms"`
	LatencyP99ms    float64 `json:"latency_p99_ms"`
	LatencySamples  int     `json:"latency_samples"`
}

// Report returns the current figures.
func (s *Stats) Report() Report {
	now := s.now()
	r := Report{
		MsgReq: s.req.Load(), MsgAck: s.ack.Load(), MsgNak: s.nak.Load(),
		InvalidLines: s.invalid.Load(), ProxyNAKs: s.proxyNAKs.Load(), ActiveConns: s.active.Load(),
		RequestRate1s:   s.requests.Rate(now, time.Second),
		RequestRate10s:  s.requests.Rate(now, 10*time.Second),
		ResponseRate1s:  s.responses.Rate(now, time.Second),
		ResponseRate10s: s.responses.Rate(now, 10*time.Second),
	}
	r.MsgTotal = r.MsgReq + r.MsgAck + r.MsgNak
	s.latMu.Lock()
	n := min(s.latN, latencySamples)
	samples := slices.Clone(s.lat[:n])
	s.latMu.Unlock()
	if n > 0 {
		slices.Sort(samples)
		pick := func(q float64) float64 {
			return float64(samples[min(n-1, int(q*float64(n)))]) / float64(time.Millisecond)
		}
		r.LatencyP50ms, r.LatencyP90ms, r.LatencyP99ms, r.LatencySamples = pick(0.5), pick(0.9), pick(0.99), n
	}
	return r
}

// Snapshot is the persisted state: totals and both rate windows.
type Snapshot struct {
	Version   int       `json:"version"`
	SavedAt   time.Time `json:"saved_at"`
	Req       uint64    `json:"msg_req"`
	Ack       uint64    `json:"msg_ack"`
	Nak       uint64    `json:"msg_nak"`
	Invalid   uint64    `json:"invalid_lines"`
	Head      int64     `json:"bucket_head"` // newest 100 ms bucket, unix time / 100 ms
	Requests  []uint64  `json:"request_buckets"`
	Responses []uint64  `json:"response_buckets"`
}

const snapshotVersion = 1

// Snapshot captures the state to persist.
func (s *Stats) Snapshot() Snapshot {
	now := s.now()
	s.requests.Rate(now, bucketWidth) // advance both windows to now
	s.responses.Rate(now, bucketWidth)
	req, head := s.requests.snapshot()
	resp, _ := s.responses.snapshot()
	return Snapshot{Version: snapshotVersion, SavedAt: now, Req: s.req.Load(), Ack: s.ack.Load(),
		Nak: s.nak.Load(), Invalid: s.invalid.Load(), Head: head, Requests: req, Responses: resp}
}

// MarshalSnapshot encodes a snapshot.
func MarshalSnapshot(sn Snapshot) ([]byte, error) { return json.Marshal(sn) }

// ErrBadSnapshot means a snapshot could not be decoded or is inconsistent.
var ErrBadSnapshot = errors.New("foo: bad snapshot")

// UnmarshalSnapshot decodes and checks a snapshot.
func UnmarshalSnapshot(b []byte) (Snapshot, error) {
	var sn Snapshot
	if err := json.Unmarshal(b, &sn); err != nil {
		return Snapshot{}, fmt.Errorf("%w: %v", ErrBadSnapshot, err)
	}
	if sn.Version != snapshotVersion || len(sn.Requests) != windowBuckets || len(sn.Responses) != windowBuckets {
		return Snapshot{}, fmt.Errorf("%w: version %d with %d/%d buckets", ErrBadSnapshot,
			sn.Version, len(sn.Requests), len(sn.Responses))
	}
	return sn, nil
}

// Restore adds a snapshot's totals to s; its rate windows are restored only
// when the snapshot is younger than 10 s, and only the buckets still inside
// the window count.
func (s *Stats) Restore(sn Snapshot) {
	s.req.Add(sn.Req)
	s.ack.Add(sn.Ack)
	s.nak.Add(sn.Nak)
	s.invalid.Add(sn.Invalid)
	if s.now().Sub(sn.SavedAt) < windowBuckets*bucketWidth {
		s.requests.restore(sn.Requests, sn.Head)
		s.responses.restore(sn.Responses, sn.Head)
	}
}
