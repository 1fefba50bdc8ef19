package l4amqp

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// poolCollector reports the pools at each scrape: their broker
// connections, channels and clients by upstream and vhost, and the
// counters pools keep (handshakes saved, clients refused to keep a shared
// connection whole).
type poolCollector struct {
	conns, channels, clients *prometheus.Desc
	saved                    *prometheus.CounterVec
	refusals                 *prometheus.CounterVec
	exclusive                prometheus.CounterFunc
}

var (
	poolMetricsOnce      sync.Once
	poolMetrics          *poolCollector
	poolExclusiveDeleted atomic.Uint64
)

func initPoolMetrics(reg *prometheus.Registry) {
	const ns, sub = "caddy", "layer4_amqp"
	poolMetricsOnce.Do(func() {
		name := func(n string) string { return prometheus.BuildFQName(ns, sub, n) }
		poolMetrics = &poolCollector{
			conns: prometheus.NewDesc(name("pool_connections"),
				"Pooled broker connections open, by upstream and route (the vhost block's pattern).", []string{"upstream", "route"}, nil),
			channels: prometheus.NewDesc(name("pool_channels"),
				"Broker channels in use on pooled connections, by upstream and route.", []string{"upstream", "route"}, nil),
			clients: prometheus.NewDesc(name("pool_clients"),
				"Clients on pooled connections, by upstream and route.", []string{"upstream", "route"}, nil),
			saved: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pool_handshakes_saved_total",
				Help: "Clients that joined an open pooled connection instead of a broker handshake, by route."}, []string{"route"}),
			refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pool_refusals_total",
				Help: "Pooled clients closed by the proxy to keep their shared connection whole, by route and reason."}, []string{"route", "reason"}),
			exclusive: prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pool_exclusive_queues_deleted_total",
				Help: "Exclusive queues the proxy deleted after the pooled client that declared them left."},
				func() float64 { return float64(poolExclusiveDeleted.Load()) }),
		}
	})
	metricsreg.Register(reg, poolMetrics, poolMetrics.saved, poolMetrics.refusals, poolMetrics.exclusive)
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.conns
	ch <- c.channels
	ch <- c.clients
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	type key struct{ upstream, route string }
	sums := map[key]*[3]int{}
	for _, p := range Pools() {
		k := key{p.Upstream, p.Route}
		if sums[k] == nil {
			sums[k] = new([3]int)
		}
		sums[k][0] += len(p.Connections)
		sums[k][1] += p.ChannelsInUse
		sums[k][2] += p.Clients
	}
	for k, s := range sums {
		ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s[0]), k.upstream, k.route)
		ch <- prometheus.MustNewConstMetric(c.channels, prometheus.GaugeValue, float64(s[1]), k.upstream, k.route)
		ch <- prometheus.MustNewConstMetric(c.clients, prometheus.GaugeValue, float64(s[2]), k.upstream, k.route)
	}
}

// Pool metrics are labelled by route, the vhost block's pattern, never by
// the vhost a client sent (the set of labels stays the config's).
func poolMetricsRefusal(route, reason string) {
	if poolMetrics != nil {
		poolMetrics.refusals.WithLabelValues(route, reason).Inc()
	}
}

func poolMetricsSaved(route string) {
	if poolMetrics != nil {
		poolMetrics.saved.WithLabelValues(route).Inc()
	}
}
