package l4amqpstream

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/amqp/stream"
	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// Sides of a tunnel stream.
const (
	sideDial   = "dial"   // opened by the amqp_tunnel handler for a client
	sideAccept = "accept" // accepted by an amqp/ listener
)

// Tunnel is one live stream as GET /prelude/tunnels reports it.
type Tunnel struct {
	ID     uint64 `json:"id"`
	Side   string `json:"side"`
	Queue  string `json:"queue"`
	Broker string `json:"broker"` // URL with the password redacted
	// The TCP client the dial side carries; empty on the accept side.
	Client          string    `json:"client,omitempty"`
	LocalQueue      string    `json:"local_queue"`
	PeerQueue       string    `json:"peer_queue"`
	Since           time.Time `json:"since"`
	BytesSent       uint64    `json:"bytes_sent"`
	BytesReceived   uint64    `json:"bytes_received"`
	Retransmits     uint64    `json:"retransmits"`
	RetransmitBytes uint64    `json:"retransmit_bytes"`
	WindowStalls    uint64    `json:"window_stalls"`
	Rejected        uint64    `json:"rejected_messages"`
}

type entry struct {
	info Tunnel
	conn *stream.Conn
}

var (
	nextID    atomic.Uint64
	tunnelsMu sync.Mutex
	tunnels   = map[uint64]*entry{}
	finished  = map[string]*stream.Stats{} // counters of ended streams, by side
)

// track registers c until it ends.
func track(side, broker, client string, c *stream.Conn) {
	e := &entry{conn: c, info: Tunnel{
		ID: nextID.Add(1), Side: side, Queue: c.Service(), Broker: broker, Client: client,
		LocalQueue: c.LocalAddr().String(), PeerQueue: c.RemoteAddr().String(), Since: time.Now(),
	}}
	tunnelsMu.Lock()
	tunnels[e.info.ID] = e
	tunnelsMu.Unlock()
	go func() {
		<-c.Done()
		st := c.Stats()
		tunnelsMu.Lock()
		defer tunnelsMu.Unlock()
		delete(tunnels, e.info.ID)
		acc := finished[side]
		if acc == nil {
			acc = new(stream.Stats)
			finished[side] = acc
		}
		addStats(acc, st)
	}()
}

func addStats(acc *stream.Stats, st stream.Stats) {
	acc.BytesSent += st.BytesSent
	acc.BytesReceived += st.BytesReceived
	acc.Retransmits += st.Retransmits
	acc.RetransmitBytes += st.RetransmitBytes
	acc.WindowStalls += st.WindowStalls
	acc.Rejected += st.Rejected
}

// Tunnels returns the live streams, oldest first, for the admin API.
func Tunnels() []Tunnel {
	tunnelsMu.Lock()
	defer tunnelsMu.Unlock()
	out := make([]Tunnel, 0, len(tunnels))
	for _, e := range tunnels {
		t := e.info
		st := e.conn.Stats()
		t.BytesSent, t.BytesReceived = st.BytesSent, st.BytesReceived
		t.Retransmits, t.RetransmitBytes = st.Retransmits, st.RetransmitBytes
		t.WindowStalls, t.Rejected = st.WindowStalls, st.Rejected
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// totals returns live plus ended counters and live stream counts, by side.
func totals() (map[string]stream.Stats, map[string]int) {
	tunnelsMu.Lock()
	defer tunnelsMu.Unlock()
	sum := map[string]stream.Stats{}
	live := map[string]int{sideDial: 0, sideAccept: 0}
	for side, acc := range finished {
		sum[side] = *acc
	}
	for _, e := range tunnels {
		acc := sum[e.info.Side]
		addStats(&acc, e.conn.Stats())
		sum[e.info.Side] = acc
		live[e.info.Side]++
	}
	return sum, live
}

// Stream results, for caddy_layer4_amqp_tunnel_streams_total.
const (
	resultOpened       = "opened"        // dial side: the listener accepted
	resultRefused      = "refused"       // dial side: nobody listens on the queue
	resultBrokerFailed = "broker_failed" // dial side: the broker could not be reached or failed
	resultAccepted     = "accepted"      // accept side
)

var (
	metricsOnce sync.Once
	streamsOpen *prometheus.CounterVec

	descActive = prometheus.NewDesc("caddy_layer4_amqp_tunnel_streams_active", "Live tunnel streams, by side.", []string{"side"}, nil)
	descBytes  = prometheus.NewDesc("caddy_layer4_amqp_tunnel_bytes_total", "Stream bytes, by side and direction (sent: into the broker).", []string{"side", "direction"}, nil)
	descRetx   = prometheus.NewDesc("caddy_layer4_amqp_tunnel_retransmits_total", "Go-back-N retransmissions, by side.", []string{"side"}, nil)
	descRetxB  = prometheus.NewDesc("caddy_layer4_amqp_tunnel_retransmit_bytes_total", "Bytes sent again, by side.", []string{"side"}, nil)
	descStalls = prometheus.NewDesc("caddy_layer4_amqp_tunnel_window_stalls_total", "Writes that waited for the peer's window, by side.", []string{"side"}, nil)
	descReject = prometheus.NewDesc("caddy_layer4_amqp_tunnel_rejected_messages_total", "Messages dropped for a bad header or a wrong stream token (injection attempts), by side.", []string{"side"}, nil)
)

type collector struct{}

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descActive, descBytes, descRetx, descRetxB, descStalls, descReject} {
		ch <- d
	}
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	sum, live := totals()
	for _, side := range []string{sideDial, sideAccept} {
		st := sum[side]
		counter := func(d *prometheus.Desc, v uint64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{side}, labels...)...)
		}
		ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(live[side]), side)
		counter(descBytes, st.BytesSent, "sent")
		counter(descBytes, st.BytesReceived, "received")
		counter(descRetx, st.Retransmits)
		counter(descRetxB, st.RetransmitBytes)
		counter(descStalls, st.WindowStalls)
		counter(descReject, st.Rejected)
	}
}

func initMetrics(reg *prometheus.Registry) {
	metricsOnce.Do(func() {
		streamsOpen = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "caddy", Subsystem: "layer4_amqp_tunnel", Name: "streams_total",
			Help: "Tunnel streams by side and result.",
		}, []string{"side", "result"})
	})
	metricsreg.Register(reg, streamsOpen, collector{})
}
