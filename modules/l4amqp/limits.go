package l4amqp

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// Limits bound a vhost block's sessions. Set on a vhost block, or on the
// handler as the default for every block that does not set a field.
type Limits struct {
	// Live sessions of the block, at most.
	MaxConnections int `json:"max_connections,omitempty"`
	// New sessions per interval, "<n>/<interval>" (e.g. "10/1s"), as a
	// token bucket that holds n.
	ConnectionRate string `json:"connection_rate,omitempty"`
	// Client-to-broker bytes per second of each session, "<size>/s"
	// (e.g. "1MiB/s"), paced by reads of at most a second's worth.
	DataRate string `json:"data_rate,omitempty"`

	rateN     float64
	rateEvery time.Duration
	dataRate  int64
}

func (l *Limits) provision() error {
	if l == nil {
		return nil
	}
	if l.MaxConnections < 0 {
		return fmt.Errorf("max_connections: %d is negative", l.MaxConnections)
	}
	if l.ConnectionRate != "" {
		n, every, ok := strings.Cut(l.ConnectionRate, "/")
		count, err1 := strconv.Atoi(n)
		d, err2 := caddy.ParseDuration(every)
		if !ok || err1 != nil || err2 != nil || count <= 0 || d <= 0 {
			return fmt.Errorf("connection_rate: %q is not <n>/<interval>, e.g. 10/1s", l.ConnectionRate)
		}
		l.rateN, l.rateEvery = float64(count), d
	}
	if l.DataRate != "" {
		size, per, ok := strings.Cut(l.DataRate, "/")
		n, err := humanize.ParseBytes(size)
		if !ok || per != "s" || err != nil || n == 0 {
			return fmt.Errorf("data_rate: %q is not <size>/s, e.g. 1MiB/s", l.DataRate)
		}
		l.dataRate = int64(n)
	}
	return nil
}

// effective merges a block's limits over the handler's defaults.
func effective(block, def *Limits) Limits {
	var out Limits
	for _, l := range []*Limits{def, block} {
		if l == nil {
			continue
		}
		if l.MaxConnections > 0 {
			out.MaxConnections = l.MaxConnections
		}
		if l.rateN > 0 {
			out.ConnectionRate, out.rateN, out.rateEvery = l.ConnectionRate, l.rateN, l.rateEvery
		}
		if l.dataRate > 0 {
			out.DataRate, out.dataRate = l.DataRate, l.dataRate
		}
	}
	return out
}

// blockState is one vhost block's live count and rate bucket. It lives at
// package level, keyed by handler name and block, so reloads keep it.
type blockState struct {
	live   int
	tokens float64
	last   time.Time
	rate   string // the connection_rate the bucket was filled for
}

var (
	blocksMu sync.Mutex
	blocks   = map[string]*blockState{}
)

// admit takes a place in the block for a new session, or returns why not.
// release gives the place back when the session ends.
func admit(key string, lim Limits) (release func(), refusal string) {
	blocksMu.Lock()
	defer blocksMu.Unlock()
	b := blocks[key]
	if b == nil {
		b = &blockState{}
		blocks[key] = b
	}
	if lim.MaxConnections > 0 && b.live >= lim.MaxConnections {
		return nil, fmt.Sprintf("max_connections %d reached", lim.MaxConnections)
	}
	if lim.rateN > 0 {
		now := time.Now()
		if b.rate != lim.ConnectionRate { // new or changed by a reload: start full
			b.rate, b.tokens, b.last = lim.ConnectionRate, lim.rateN, now
		}
		b.tokens = min(lim.rateN, b.tokens+lim.rateN*float64(now.Sub(b.last))/float64(lim.rateEvery))
		b.last = now
		if b.tokens < 1 {
			return nil, fmt.Sprintf("connection_rate %s exceeded", lim.ConnectionRate)
		}
		b.tokens--
	}
	b.live++
	var once sync.Once
	return func() {
		once.Do(func() {
			blocksMu.Lock()
			b.live--
			blocksMu.Unlock()
		})
	}, ""
}

// unmarshalLimits parses a limits block:
//
//	limits {
//		max_connections <n>
//		connection_rate <n>/<interval>
//		data_rate <size>/s
//	}
func unmarshalLimits(d *caddyfile.Dispenser) (*Limits, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	l := &Limits{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if !d.NextArg() {
			return nil, d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		switch opt {
		case "max_connections":
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 {
				return nil, d.Errf("max_connections: %q is not a positive integer", val)
			}
			l.MaxConnections = n
		case "connection_rate":
			l.ConnectionRate = val
		case "data_rate":
			l.DataRate = val
		default:
			return nil, d.Errf("limits: unknown option %q", opt)
		}
	}
	if err := l.provision(); err != nil {
		return nil, d.Err(err.Error())
	}
	return l, nil
}
