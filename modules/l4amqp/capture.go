package l4amqp

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/amqp"
)

// Capture is a capture's configuration: what POST /prelude/amqp/captures
// takes and what a `capture` block in the amqp handler sets.
type Capture struct {
	Filter Filter `json:"filter,omitzero"`
	// "ndjson" (default) or "pcapng".
	Format string `json:"format,omitempty"`
	File   string `json:"file"`
	// Body bytes kept per body frame: "none", "full" or a byte count.
	// Default "full".
	Body *BodyPolicy `json:"body,omitempty"`
	// Limits: the capture stops when it has written MaxBytes or lasted
	// Duration, and selects at most MaxSessions sessions (0: no limit).
	MaxBytes    int64          `json:"max_bytes,omitempty"`
	MaxSessions int64          `json:"max_sessions,omitempty"`
	Duration    caddy.Duration `json:"duration,omitempty"`
}

// BodyPolicy is how much of each body frame a capture keeps: -1 all, or a
// byte count. In JSON: "full", "none" or a number.
type BodyPolicy int

// UnmarshalJSON takes "full", "none", a number or a numeric string.
func (b *BodyPolicy) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		var n int64
		if err := json.Unmarshal(data, &n); err != nil {
			return fmt.Errorf(`body: want "none", "full" or a byte count, got %s`, data)
		}
		s = strconv.FormatInt(n, 10)
	}
	p, err := ParseBodyPolicy(s)
	*b = p
	return err
}

// MarshalJSON gives "full", "none" or the count.
func (b BodyPolicy) MarshalJSON() ([]byte, error) {
	switch {
	case b < 0:
		return []byte(`"full"`), nil
	case b == 0:
		return []byte(`"none"`), nil
	}
	return []byte(strconv.Itoa(int(b))), nil
}

// ParseBodyPolicy parses "full", "none" or a byte count.
func ParseBodyPolicy(s string) (BodyPolicy, error) {
	switch s {
	case "", "full":
		return -1, nil
	case "none":
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, fmt.Errorf(`body: want "none", "full" or a byte count, got %q`, s)
	}
	return BodyPolicy(n), nil
}

// validate checks the configuration and fills in defaults.
func (c *Capture) validate() error {
	switch c.Format {
	case "":
		c.Format = "ndjson"
	case "ndjson", "pcapng":
	default:
		return fmt.Errorf(`format: %q is not "ndjson" or "pcapng"`, c.Format)
	}
	if c.File == "" {
		return errors.New("file: a path to write the capture to is required")
	}
	if c.Body == nil {
		full := BodyPolicy(-1)
		c.Body = &full
	}
	if c.MaxBytes < 0 || c.MaxSessions < 0 || c.Duration < 0 {
		return errors.New("max_bytes, max_sessions and duration must not be negative")
	}
	return c.Filter.compile()
}

// CaptureInfo is a capture as GET /prelude/amqp/captures lists it.
type CaptureInfo struct {
	ID       string    `json:"id"`
	Capture  Capture   `json:"capture"`
	Started  time.Time `json:"started"`
	State    string    `json:"state"` // running, stopped, failed, limit
	Reason   string    `json:"reason,omitempty"`
	Sessions int64     `json:"sessions"`
	Frames   uint64    `json:"frames"`
	Bytes    int64     `json:"bytes"`
	Source   string    `json:"source"` // api or config
}

// fileCapture is a running capture writing to a file.
type fileCapture struct {
	tap
	cfg     Capture
	source  string
	started time.Time

	mu     sync.Mutex
	file   *os.File
	buf    *bufio.Writer
	pcap   *pcapWriter // for pcapng
	bytes  int64
	state  string
	reason string
	timer  *time.Timer
	done   chan struct{}
}

// Captures by id: the API's and the config's. They belong to the process,
// not to a config, so reloads keep them running.
var (
	capturesMu sync.Mutex
	captures   = map[string]*fileCapture{}
)

// StartCapture validates c, opens its file and starts selecting sessions
// routed from now on. It returns the capture's id. A file that exists is
// refused unless appendTo (config captures append across restarts).
func StartCapture(c Capture, source string, appendTo bool) (string, error) {
	if err := c.validate(); err != nil {
		return "", err
	}
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if appendTo {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(c.File, flags, 0o600)
	if err != nil {
		return "", fmt.Errorf("file: %v", err)
	}
	fc := &fileCapture{cfg: c, source: source, started: time.Now(), file: f,
		buf: bufio.NewWriterSize(f, 64<<10), state: "running", done: make(chan struct{})}
	if c.Format == "pcapng" {
		if fc.pcap, err = newPCAPWriter(fc.buf); err != nil {
			_ = f.Close()
			_ = os.Remove(c.File)
			return "", fmt.Errorf("file: %v", err)
		}
	}
	fc.tap = tap{id: newID(), filter: c.Filter, body: int(*c.Body), sink: fc, maxSessions: c.MaxSessions}
	fc.tap.failed = func(err error) { fc.stop("failed", err.Error()) }
	capturesMu.Lock()
	captures[fc.id] = fc
	capturesMu.Unlock()
	if c.Duration > 0 {
		fc.timer = time.AfterFunc(time.Duration(c.Duration), func() { fc.stop("limit", "duration reached") })
	}
	go fc.flushEverySecond()
	startTap(&fc.tap, false)
	return fc.id, nil
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// StopCapture stops a capture and closes its file complete. It returns the
// capture's final state, or false for an unknown id.
func StopCapture(id string) (CaptureInfo, bool) {
	capturesMu.Lock()
	fc := captures[id]
	delete(captures, id)
	capturesMu.Unlock()
	if fc == nil {
		return CaptureInfo{}, false
	}
	fc.stop("stopped", "")
	return fc.info(), true
}

// Captures lists the captures, running and ended (until deleted).
func Captures() []CaptureInfo {
	capturesMu.Lock()
	out := make([]CaptureInfo, 0, len(captures))
	for _, fc := range captures {
		out = append(out, fc.info())
	}
	capturesMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}

func (fc *fileCapture) info() CaptureInfo {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return CaptureInfo{ID: fc.id, Capture: fc.cfg, Started: fc.started, State: fc.state, Reason: fc.reason,
		Sessions: fc.selected(), Frames: fc.frames.Load(),
		Bytes: fc.bytes, Source: fc.source}
}

// selected is how many sessions the capture took (refusals past
// max_sessions count in sessions too).
func (fc *fileCapture) selected() int64 {
	n := fc.sessions.Load()
	if fc.maxSessions > 0 {
		return min(n, fc.maxSessions)
	}
	return n
}

// stop ends the capture once: it leaves the taps, flushes and closes the
// file. A failure or a limit is logged and emitted as an event.
func (fc *fileCapture) stop(state, reason string) {
	fc.mu.Lock()
	if fc.file == nil {
		fc.mu.Unlock()
		return
	}
	fc.stopped.Store(true)
	fc.state, fc.reason = state, reason
	ferr := fc.buf.Flush()
	cerr := fc.file.Close()
	fc.file = nil
	if fc.timer != nil {
		fc.timer.Stop()
	}
	close(fc.done)
	fc.mu.Unlock()
	go stopTap(&fc.tap) // not under fc.mu: a session may be writing to fc
	if err := errors.Join(ferr, cerr); err != nil && state != "failed" {
		state, reason = "failed", err.Error()
		fc.mu.Lock()
		fc.state, fc.reason = state, reason
		fc.mu.Unlock()
	}
	if state == "stopped" {
		return
	}
	caddy.Log().Named("layer4.handlers.amqp").Warn("amqp capture stopped",
		zap.String("id", fc.id), zap.String("file", fc.cfg.File), zap.String("state", state), zap.String("reason", reason))
	emitGlobal(EventCaptureStopped, map[string]any{"id": fc.id, "file": fc.cfg.File, "state": state, "reason": reason})
}

func (fc *fileCapture) flushEverySecond() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-fc.done:
			return
		case <-t.C:
			fc.mu.Lock()
			var err error
			if fc.file != nil {
				err = fc.buf.Flush()
			}
			fc.mu.Unlock()
			if err != nil {
				fc.stop("failed", err.Error())
			}
		}
	}
}

// write appends one record, within max_bytes.
func (fc *fileCapture) write(b []byte) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.writeLocked(func() (int, error) { return fc.buf.Write(b) })
}

// writeLocked runs a write of the capture's file under fc.mu, counting its
// bytes and stopping the capture at max_bytes.
func (fc *fileCapture) writeLocked(w func() (int, error)) error {
	if fc.file == nil {
		return nil
	}
	n, err := w()
	fc.bytes += int64(n)
	if err != nil {
		return err
	}
	if fc.cfg.MaxBytes > 0 && fc.bytes >= fc.cfg.MaxBytes {
		go fc.stop("limit", "max_bytes reached")
	}
	return nil
}

// open implements sink: the session's open line (NDJSON) or TCP handshake
// (pcapng), then its AMQP handshake.
func (fc *fileCapture) open(m *sessionMeta, now time.Time) (sinkSession, error) {
	cs := &captureSession{fc: fc, meta: m}
	if fc.pcap != nil {
		cs.pcap = fc.pcap.newSession(m)
		if err := fc.lockedPCAP(func() error { return cs.pcap.open(now) }); err != nil {
			return nil, err
		}
	} else if err := fc.write(appendEventLine(nil, m, "open", now)); err != nil {
		return nil, err
	}
	handshake := m.handshake()
	for i := range handshake {
		if err := cs.frame(&handshake[i], now); err != nil {
			return nil, err
		}
	}
	return cs, nil
}

func (fc *fileCapture) lockedPCAP(f func() error) error {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.writeLocked(func() (int, error) {
		before := fc.pcap.written
		err := f()
		if err == nil {
			err = fc.pcap.ng.Flush() // into fc.buf, so that written counts it
		}
		return int(fc.pcap.written - before), err
	})
}

// captureSession writes one session's frames.
type captureSession struct {
	fc   *fileCapture
	meta *sessionMeta
	pcap *pcapSession
	line []byte
}

func (cs *captureSession) frame(f *amqp.FrameInfo, now time.Time) error {
	if cs.pcap != nil {
		return cs.fc.lockedPCAP(func() error { return cs.pcap.frame(f, now) })
	}
	cs.line = appendFrameLine(cs.line[:0], cs.meta, f, now)
	return cs.fc.write(cs.line)
}

func (cs *captureSession) close(ended string, now time.Time) error {
	if cs.pcap != nil {
		return cs.fc.lockedPCAP(func() error { return cs.pcap.close(now) })
	}
	return cs.fc.write(appendEventLine(nil, cs.meta, "close", now, "ended", ended))
}

// Events about captures (with an events app).
const (
	// EventCaptureStopped: a capture stopped on its own (a limit, or a
	// write that failed). Data: id, file, state, reason.
	EventCaptureStopped = "amqp_capture_stopped"
)

// emitGlobal emits through the events app of one of the current handlers
// (captures belong to the process, not to a handler).
func emitGlobal(name string, data map[string]any) {
	handlersMu.Lock()
	var h *Handler
	for _, c := range handlers {
		h = c
		break
	}
	handlersMu.Unlock()
	if h != nil {
		h.emit(name, data)
	}
}

// Captures a config names are shared by file through a UsagePool, so a
// reload that keeps one keeps it running; the last config to drop it stops it.
var configCaptures = caddy.NewUsagePool()

type configCapture struct{ id string }

func (c configCapture) Destruct() error {
	StopCapture(c.id)
	return nil
}

func (h *Handler) startCaptures() error {
	for i := range h.Captures {
		c := h.Captures[i]
		if err := c.validate(); err != nil {
			return fmt.Errorf("captures[%d]: %v", i, err)
		}
		key := "amqp-capture\x00" + c.File
		_, _, err := configCaptures.LoadOrNew(key, func() (caddy.Destructor, error) {
			id, err := StartCapture(c, "config", true)
			return configCapture{id: id}, err
		})
		if err != nil {
			return fmt.Errorf("captures[%d]: %v", i, err)
		}
		h.captureKeys = append(h.captureKeys, key)
	}
	return nil
}

func (h *Handler) releaseCaptures() {
	for _, k := range h.captureKeys {
		_, _ = configCaptures.Delete(k)
	}
	h.captureKeys = nil
}
