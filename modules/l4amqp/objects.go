package l4amqp

import (
	"sync"
	"sync/atomic"

	"github.com/caddyprelude/prelude/amqp"
)

// Per-exchange and per-queue counters, for handlers with stats_objects > 0:
// messages and body bytes published to each exchange (and returned from
// it), delivered from each queue (to consumers and Basic.Get). Names come
// from clients, so each kind holds at most the configured number of names,
// process-wide; later names count under otherObject.
const otherObject = "(other)"

// defaultExchange names the nameless default exchange, as RabbitMQ does.
const defaultExchange = "amq.default"

// ObjectCounts is one exchange's or queue's counters in the stats API.
type ObjectCounts struct {
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	Returned uint64 `json:"returned,omitempty"` // exchanges: Basic.Return
}

type objectTally struct {
	messages, bytes, returned atomic.Uint64
}

// objectRegistry holds the tallies of one kind.
type objectRegistry struct {
	mu    sync.Mutex
	byKey map[string]*objectTally
}

var (
	exchangeTallies = &objectRegistry{byKey: map[string]*objectTally{}}
	queueTallies    = &objectRegistry{byKey: map[string]*objectTally{}}
	objectLimit     atomic.Int64 // names per kind; set by the handlers that count
)

// tally returns name's tally, or otherObject's once the limit is reached.
func (r *objectRegistry) tally(name string) *objectTally {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.byKey[name]
	if t == nil {
		if int64(len(r.byKey)) >= objectLimit.Load() {
			name = otherObject
			if t = r.byKey[name]; t != nil {
				return t
			}
		}
		t = new(objectTally)
		r.byKey[name] = t
	}
	return t
}

func (r *objectRegistry) snapshot() map[string]ObjectCounts {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]ObjectCounts, len(r.byKey))
	for k, t := range r.byKey {
		out[k] = ObjectCounts{Messages: t.messages.Load(), Bytes: t.bytes.Load(), Returned: t.returned.Load()}
	}
	return out
}

// objectTracker follows one session's exchanges and queues. Each direction
// calls frame from its own goroutine; what links the two (consumer tags,
// pending gets) is under mu.
type objectTracker struct {
	cache   [2][2]map[string]*objectTally // per direction and registry: names seen, no lock
	content [2]map[uint16]*objectTally    // per direction: the tally the channel's next content header counts to

	mu        sync.Mutex
	consumers map[string]*objectTally // consumer tag -> queue
	consuming map[uint16]*objectTally // channel -> queue of a Consume awaiting Consume-Ok
	getting   map[uint16]*objectTally // channel -> queue of a Get awaiting Get-Ok
}

func newObjectTracker() *objectTracker {
	t := &objectTracker{consumers: map[string]*objectTally{}, consuming: map[uint16]*objectTally{}, getting: map[uint16]*objectTally{}}
	for i := range t.cache {
		t.cache[i] = [2]map[string]*objectTally{{}, {}}
		t.content[i] = map[uint16]*objectTally{}
	}
	return t
}

// named returns the tally of the shortstr at b[off:] in r, caching it for dir.
func (t *objectTracker) named(dir amqp.Dir, r *objectRegistry, b []byte, off int, def string) *objectTally {
	name, ok := shortstrAt(b, off)
	if !ok {
		return nil
	}
	if len(name) == 0 && def != "" {
		name = []byte(def)
	}
	cache := t.cache[dir][0]
	if r == queueTallies {
		cache = t.cache[dir][1]
	}
	if c := cache[string(name)]; c != nil { // no allocation for the lookup
		return c
	}
	c := r.tally(string(name))
	cache[string(name)] = c
	return c
}

func shortstrAt(b []byte, off int) ([]byte, bool) {
	if len(b) <= off || len(b) < off+1+int(b[off]) {
		return nil, false
	}
	return b[off+1 : off+1+int(b[off])], true
}

// frame counts one frame (spec 1.8 argument offsets: class and method
// ids take 4 bytes; publish, consume and get start with a reserved short).
func (t *objectTracker) frame(f *amqp.FrameInfo) {
	if f.Err != nil {
		return
	}
	d := f.Dir & 1
	switch {
	case f.Type == amqp.FrameHeader:
		if tally := t.content[d][f.Channel]; tally != nil {
			delete(t.content[d], f.Channel)
			size, _ := amqp.ContentBodySize(f.Payload)
			tally.messages.Add(1)
			tally.bytes.Add(size)
		}
	case f.Type != amqp.FrameMethod || f.Class != amqp.ClassBasic:
	case f.Dir == amqp.FromClient:
		t.clientMethod(f)
	default:
		t.brokerMethod(f)
	}
}

func (t *objectTracker) clientMethod(f *amqp.FrameInfo) {
	switch f.Method {
	case amqp.MethodBasicPublish:
		if x := t.named(amqp.FromClient, exchangeTallies, f.Payload, 6, defaultExchange); x != nil {
			t.content[amqp.FromClient][f.Channel] = x
		}
	case amqp.MethodBasicConsume:
		q := t.named(amqp.FromClient, queueTallies, f.Payload, 6, "")
		qlen := 0
		if name, ok := shortstrAt(f.Payload, 6); ok {
			qlen = len(name)
		}
		tag, ok := shortstrAt(f.Payload, 7+qlen)
		if q == nil || !ok {
			return
		}
		t.mu.Lock()
		if len(tag) > 0 {
			t.consumers[string(tag)] = q
		} else {
			t.consuming[f.Channel] = q
		}
		t.mu.Unlock()
	case 70: // basic.get
		if q := t.named(amqp.FromClient, queueTallies, f.Payload, 6, ""); q != nil {
			t.mu.Lock()
			t.getting[f.Channel] = q
			t.mu.Unlock()
		}
	}
}

func (t *objectTracker) brokerMethod(f *amqp.FrameInfo) {
	switch f.Method {
	case amqp.MethodBasicConsumeOk:
		if tag, ok := shortstrAt(f.Payload, 4); ok {
			t.mu.Lock()
			if q := t.consuming[f.Channel]; q != nil {
				t.consumers[string(tag)] = q
				delete(t.consuming, f.Channel)
			}
			t.mu.Unlock()
		}
	case amqp.MethodBasicDeliver:
		if tag, ok := shortstrAt(f.Payload, 4); ok {
			t.mu.Lock()
			q := t.consumers[string(tag)]
			t.mu.Unlock()
			if q != nil {
				t.content[amqp.FromBroker][f.Channel] = q
			}
		}
	case amqp.MethodBasicGetOk, 72: // get-ok, get-empty
		t.mu.Lock()
		q := t.getting[f.Channel]
		delete(t.getting, f.Channel)
		t.mu.Unlock()
		if q != nil && f.Method == amqp.MethodBasicGetOk {
			t.content[amqp.FromBroker][f.Channel] = q
		}
	case amqp.MethodBasicReturn:
		// reply-code(2), reply-text, exchange, routing-key
		if text, ok := shortstrAt(f.Payload, 6); ok {
			if x := t.named(amqp.FromBroker, exchangeTallies, f.Payload, 7+len(text), defaultExchange); x != nil {
				x.returned.Add(1)
			}
		}
	}
}

// ObjectStats is the per-exchange and per-queue part of GET
// /prelude/amqp/stats (empty unless a handler sets stats_objects).
type ObjectStats struct {
	Exchanges map[string]ObjectCounts `json:"exchanges"`
	Queues    map[string]ObjectCounts `json:"queues"`
}

// Objects returns the per-exchange and per-queue counters.
func Objects() ObjectStats {
	return ObjectStats{Exchanges: exchangeTallies.snapshot(), Queues: queueTallies.snapshot()}
}
