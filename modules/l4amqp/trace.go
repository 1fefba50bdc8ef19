package l4amqp

import (
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// Trace is a live trace: the NDJSON lines of the sessions its filter
// selects, for GET /prelude/amqp/trace. Lines go through a bounded queue;
// when the reader falls behind, lines are dropped and counted, never
// waited for, so a slow reader never slows a session. The reader learns of
// drops from a {"event":"dropped","lines":n} line.
type Trace struct {
	tap
	lines   chan []byte
	queued  atomic.Int64 // bytes of the lines in the queue
	dropped atomic.Uint64
}

// A trace holds at most traceQueue lines and traceQueueBytes bytes for its
// reader (bodies make lines large).
const (
	traceQueue      = 4096
	traceQueueBytes = 16 << 20
)

// StartTrace starts a trace of the sessions routed from now on and of the
// live ones that decode their frames (all, unless stats are off). body is
// the body policy (bodies of sessions already running are kept as their
// decoders were set up when they started).
func StartTrace(f Filter, body BodyPolicy) (*Trace, error) {
	if err := f.compile(); err != nil {
		return nil, err
	}
	t := &Trace{lines: make(chan []byte, traceQueue)}
	t.tap = tap{id: "trace-" + newID(), filter: f, body: int(body), sink: t}
	t.tap.failed = func(error) {}
	startTap(&t.tap, true)
	return t, nil
}

// Lines is the queue of lines to read; the reader calls Took for each.
func (t *Trace) Lines() <-chan []byte { return t.lines }

// Took tells the trace a line was taken off its queue.
func (t *Trace) Took(line []byte) { t.queued.Add(-int64(len(line))) }

// TakeDropped returns the lines dropped since the last call.
func (t *Trace) TakeDropped() uint64 { return t.dropped.Swap(0) }

// Stop ends the trace.
func (t *Trace) Stop() { stopTap(&t.tap) }

func (t *Trace) send(line []byte) {
	if t.queued.Add(int64(len(line))) > traceQueueBytes {
		t.queued.Add(-int64(len(line)))
		t.dropped.Add(1)
		return
	}
	select {
	case t.lines <- line:
	default:
		t.queued.Add(-int64(len(line)))
		t.dropped.Add(1)
	}
}

// open implements sink.
func (t *Trace) open(m *sessionMeta, now time.Time) (sinkSession, error) {
	t.send(appendEventLine(nil, m, "open", now))
	return &traceSession{t: t, meta: m}, nil
}

type traceSession struct {
	t    *Trace
	meta *sessionMeta
}

func (ts *traceSession) frame(f *amqp.FrameInfo, now time.Time) error {
	ts.t.send(appendFrameLine(nil, ts.meta, f, now))
	return nil
}

func (ts *traceSession) close(ended string, now time.Time) error {
	ts.t.send(appendEventLine(nil, ts.meta, "close", now, "ended", ended))
	return nil
}
