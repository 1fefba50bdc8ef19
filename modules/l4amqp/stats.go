package l4amqp

import (
	"net"
	"strconv"
	"sync"

	"github.com/caddyprelude/prelude/amqp"
)

// Counters count what happened to client connections, for GET
// /prelude/amqp/stats. Refused and Closes are keyed by reason.
type Counters struct {
	Accepted uint64 `json:"accepted"`
	Active   int64  `json:"active"`
	// limit, no_route, pause_timeout, auth (the broker refused the login or vhost)
	Refused map[string]uint64 `json:"refused"`
	// No member of the farm could be reached.
	FailedUpstream uint64 `json:"failed_upstream"`
	// Handshakes that ended otherwise: protocol errors, timeouts, clients
	// that left before Open.
	HandshakeFailed uint64 `json:"handshake_failed"`
	// Of those, clients held by a pause of their vhost that gave up
	// waiting (their library's own timeout) before resume or pause_timeout.
	PauseGaveUp uint64 `json:"pause_gave_up"`
	// How routed sessions ended: clean (Connection.Close / Close-Ok),
	// client_dropped, broker_dropped, severed (by an operator).
	Closes   map[string]uint64 `json:"closes"`
	BytesIn  uint64            `json:"bytes_in"`  // client to broker, after the handshake
	BytesOut uint64            `json:"bytes_out"` // broker to client, after the handshake
	// From the session decoder (zero with stats off): messages, channels
	// opened, Channel.Close reply codes, time blocked by the broker.
	Messages       amqp.Counts       `json:"messages"`
	ChannelsOpened uint64            `json:"channels_opened"`
	ChannelCloses  map[string]uint64 `json:"channel_closes"`
	BlockedSeconds float64           `json:"blocked_seconds"`
}

// addMessages adds a session's statistics.
func (c *Counters) addMessages(m sessionMessages) {
	c.Messages.Add(m.Counts)
	c.ChannelsOpened += m.ChannelsOpened
	for code, n := range m.ChannelCloses {
		c.ChannelCloses[strconv.Itoa(int(code))] += n
	}
	c.BlockedSeconds += m.Blocked.Seconds()
}

// Stats is the whole of GET /prelude/amqp/stats.
type Stats struct {
	Overall   Counters             `json:"overall"`
	VHosts    map[string]*Counters `json:"vhosts"`
	Upstreams map[string]*Counters `json:"upstreams"`
	Sources   map[string]*Counters `json:"sources"` // by client IP
	// With stats_objects: per exchange and per queue.
	Exchanges map[string]ObjectCounts `json:"exchanges,omitempty"`
	Queues    map[string]ObjectCounts `json:"queues,omitempty"`
}

// Reasons for refusals and closes.
const (
	refusedLimit        = "limit"
	refusedNoRoute      = "no_route"
	refusedPauseTimeout = "pause_timeout"
	refusedAuth         = "auth"

	closeClean         = "clean"
	closeClientDropped = "client_dropped"
	closeBrokerDropped = "broker_dropped"
	closeSevered       = "severed"
	closeRefused       = "refused" // a pooled client refused for a frame that would break its shared connection
)

// maxSources bounds the per-source table; later sources count under "other".
// maxKeys bounds the per-vhost and per-upstream tables the same way.
const (
	maxSources = 10000
	maxKeys    = 10000
)

// notRouted is the vhost key of every session that was not routed: a vhost
// name gets its own counters only once a broker accepted a session of it,
// so names that clients make up cannot grow the table.
const notRouted = "(not routed)"

var (
	statsMu sync.Mutex
	stats   = newStats()
)

func newStats() *Stats {
	return &Stats{Overall: newCounters(), VHosts: map[string]*Counters{}, Upstreams: map[string]*Counters{}, Sources: map[string]*Counters{}}
}

func newCounters() Counters {
	return Counters{Refused: map[string]uint64{}, Closes: map[string]uint64{}, ChannelCloses: map[string]uint64{}}
}

func counters(m map[string]*Counters, key string, limit int) *Counters {
	c := m[key]
	if c == nil {
		if limit > 0 && len(m) >= limit {
			key = "other"
			if c = m[key]; c != nil {
				return c
			}
		}
		nc := newCounters()
		c = &nc
		m[key] = c
	}
	return c
}

// sourceKey is the client's IP, the unit operators limit and block by.
func sourceKey(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	if a == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// record applies f to the overall counters (if overall) and to those of
// each key given (vhost, upstream and source may be empty: not known yet or
// counted elsewhere).
func record(overall bool, vhost, upstream, source string, f func(*Counters)) {
	statsMu.Lock()
	defer statsMu.Unlock()
	if overall {
		f(&stats.Overall)
	}
	if vhost != "" {
		f(counters(stats.VHosts, vhost, maxKeys))
	}
	if upstream != "" {
		f(counters(stats.Upstreams, upstream, maxKeys))
	}
	if source != "" {
		f(counters(stats.Sources, source, maxSources))
	}
}

// StatsSnapshot returns a deep copy of the counters, the live sessions'
// message statistics included.
func StatsSnapshot() Stats {
	live := liveMessages()
	statsMu.Lock()
	defer statsMu.Unlock()
	cp := func(c *Counters) *Counters {
		n := *c
		n.Refused, n.Closes, n.ChannelCloses = map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
		for k, v := range c.Refused {
			n.Refused[k] = v
		}
		for k, v := range c.Closes {
			n.Closes[k] = v
		}
		for k, v := range c.ChannelCloses {
			n.ChannelCloses[k] = v
		}
		return &n
	}
	out := Stats{Overall: *cp(&stats.Overall), VHosts: map[string]*Counters{}, Upstreams: map[string]*Counters{}, Sources: map[string]*Counters{}}
	for k, v := range stats.VHosts {
		out.VHosts[k] = cp(v)
	}
	for k, v := range stats.Upstreams {
		out.Upstreams[k] = cp(v)
	}
	for k, v := range stats.Sources {
		out.Sources[k] = cp(v)
	}
	objs := Objects()
	out.Exchanges, out.Queues = objs.Exchanges, objs.Queues
	for _, m := range live {
		out.Overall.addMessages(m.msgs)
		for _, c := range []*Counters{out.VHosts[m.vhost], out.Upstreams[m.upstream], out.Sources[m.source]} {
			if c != nil {
				c.addMessages(m.msgs)
			}
		}
	}
	return out
}
