package l4amqp

import (
	"net"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/amqp"
)

// liveMessage is one live session's statistics so far, with its keys.
type liveMessage struct {
	vhost, upstream, source, route string
	msgs                           sessionMessages
}

// liveMessages reads the statistics of the live sessions that have them.
func liveMessages() []liveMessage {
	var out []liveMessage
	for _, l := range sessionsWhere(func(l *liveSession) bool { return l.watch != nil && l.watch.obs != nil }) {
		host, _, err := net.SplitHostPort(l.info.Client)
		if err != nil {
			host = l.info.Client
		}
		out = append(out, liveMessage{vhost: l.info.VHost, upstream: l.info.Upstream, source: host,
			route: l.info.Route, msgs: l.watch.messages()})
	}
	return out
}

// Ended sessions' statistics by route label (bounded: the config's vhost
// patterns, default and unrouted), for the metrics.
var (
	routeMsgsMu sync.Mutex
	routeMsgs   = map[string]*sessionMessages{}
)

func foldRoute(route string, m sessionMessages) {
	routeMsgsMu.Lock()
	defer routeMsgsMu.Unlock()
	r := routeMsgs[route]
	if r == nil {
		r = &sessionMessages{ChannelCloses: map[uint16]uint64{}}
		routeMsgs[route] = r
	}
	r.add(m)
}

func (s *sessionMessages) add(m sessionMessages) {
	s.Counts.Add(m.Counts)
	s.ChannelsOpened += m.ChannelsOpened
	for code, n := range m.ChannelCloses {
		s.ChannelCloses[code] += n
	}
	s.Blocked += m.Blocked
}

// messageCollector serves the decoder's statistics by route: ended
// sessions' totals plus the live sessions' counts at scrape time, so that
// the relay pays no metric update per message.
type messageCollector struct {
	messages, bytes, opened, closed, blocked   *prometheus.Desc
	exchange, exchangeBytes, queue, queueBytes *prometheus.Desc
}

func newMessageCollector() *messageCollector {
	const ns, sub = "caddy", "layer4_amqp"
	name := func(n string) string { return prometheus.BuildFQName(ns, sub, n) }
	return &messageCollector{
		messages: prometheus.NewDesc(name("messages_total"),
			"AMQP messages by route and kind: published, delivered, acked, nacked, rejected (by clients), returned, confirmed, confirm_nacked (publisher confirms).",
			[]string{"route", "kind"}, nil),
		bytes: prometheus.NewDesc(name("message_body_bytes_total"),
			"AMQP message body bytes by route and kind (published, delivered).", []string{"route", "kind"}, nil),
		opened: prometheus.NewDesc(name("channels_opened_total"), "AMQP channels opened, by route.", []string{"route"}, nil),
		closed: prometheus.NewDesc(name("channel_closes_total"),
			"AMQP Channel.Close methods (either side), by route and reply code.", []string{"route", "code"}, nil),
		blocked: prometheus.NewDesc(name("blocked_seconds_total"),
			"Time AMQP sessions spent blocked by the broker (Connection.Blocked), by route.", []string{"route"}, nil),
		exchange: prometheus.NewDesc(name("exchange_messages_total"),
			"AMQP messages by exchange (with stats_objects) and kind: published, returned.", []string{"exchange", "kind"}, nil),
		exchangeBytes: prometheus.NewDesc(name("exchange_body_bytes_total"),
			"AMQP message body bytes published, by exchange (with stats_objects).", []string{"exchange"}, nil),
		queue: prometheus.NewDesc(name("queue_messages_total"),
			"AMQP messages delivered (to consumers and Basic.Get), by queue (with stats_objects).", []string{"queue"}, nil),
		queueBytes: prometheus.NewDesc(name("queue_body_bytes_total"),
			"AMQP message body bytes delivered, by queue (with stats_objects).", []string{"queue"}, nil),
	}
}

func (c *messageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.messages, c.bytes, c.opened, c.closed, c.blocked, c.exchange, c.exchangeBytes, c.queue, c.queueBytes} {
		ch <- d
	}
}

func (c *messageCollector) Collect(ch chan<- prometheus.Metric) {
	live := liveMessages()
	routeMsgsMu.Lock()
	byRoute := make(map[string]*sessionMessages, len(routeMsgs))
	for r, m := range routeMsgs {
		cp := sessionMessages{ChannelCloses: map[uint16]uint64{}}
		cp.add(*m)
		byRoute[r] = &cp
	}
	routeMsgsMu.Unlock()
	for _, l := range live {
		m := byRoute[l.route]
		if m == nil {
			m = &sessionMessages{ChannelCloses: map[uint16]uint64{}}
			byRoute[l.route] = m
		}
		m.add(l.msgs)
	}
	for route, m := range byRoute {
		c.collectRoute(ch, route, m)
	}
	objs := Objects()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for name, o := range objs.Exchanges {
		counter(c.exchange, o.Messages, name, "published")
		counter(c.exchange, o.Returned, name, "returned")
		counter(c.exchangeBytes, o.Bytes, name)
	}
	for name, o := range objs.Queues {
		counter(c.queue, o.Messages, name)
		counter(c.queueBytes, o.Bytes, name)
	}
}

func (c *messageCollector) collectRoute(ch chan<- prometheus.Metric, route string, m *sessionMessages) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{route}, labels...)...)
	}
	n := m.Counts
	for kind, v := range map[string]uint64{"published": n.Published, "delivered": n.Delivered, "acked": n.Acked,
		"nacked": n.Nacked, "rejected": n.Rejected, "returned": n.Returned, "confirmed": n.Confirmed,
		"confirm_nacked": n.ConfirmNacked} {
		counter(c.messages, float64(v), kind)
	}
	counter(c.bytes, float64(n.PublishedBytes), "published")
	counter(c.bytes, float64(n.DeliveredBytes), "delivered")
	counter(c.opened, float64(m.ChannelsOpened))
	for code, v := range m.ChannelCloses {
		counter(c.closed, float64(v), strconv.Itoa(int(code)))
	}
	counter(c.blocked, m.Blocked.Seconds())
}

// SessionDetail is GET /prelude/amqp/sessions/{id}: the session and, with
// statistics on, its counts and open channels.
type SessionDetail struct {
	Session
	Stats          bool              `json:"stats"`
	Messages       amqp.Counts       `json:"messages"`
	ChannelsOpened uint64            `json:"channels_opened"`
	ChannelCloses  map[string]uint64 `json:"channel_closes"`
	BlockedSeconds float64           `json:"blocked_seconds"`
	Channels       []amqp.Channel    `json:"channels"`
}

// SessionByID returns one live session in detail.
func SessionByID(id uint64) (SessionDetail, bool) {
	for _, s := range Sessions("") {
		if s.ID != id {
			continue
		}
		sessionsMu.Lock()
		l := sessions[id]
		sessionsMu.Unlock()
		if l == nil {
			return SessionDetail{}, false
		}
		m := l.watch.messages()
		d := SessionDetail{Session: s, Stats: l.watch != nil && l.watch.obs != nil, Messages: m.Counts,
			ChannelsOpened: m.ChannelsOpened, ChannelCloses: map[string]uint64{},
			BlockedSeconds: m.Blocked.Seconds(), Channels: l.watch.channels()}
		for code, n := range m.ChannelCloses {
			d.ChannelCloses[strconv.Itoa(int(code))] = n
		}
		return d, true
	}
	return SessionDetail{}, false
}
