package l4foo

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// collector exports every stats set as caddy_layer4_foo_* metrics, read at
// scrape time so that restored totals are included.
type collector struct{}

var (
	descMessages = prometheus.NewDesc("caddy_layer4_foo_messages_total",
		"Foo messages seen, by stats set and type (req, ack, nak); restored across restarts.", []string{"stats", "type"}, nil)
	descInvalid = prometheus.NewDesc("caddy_layer4_foo_invalid_lines_total",
		"Lines that were not a message for their direction, or over max_line.", []string{"stats"}, nil)
	descProxyNAKs = prometheus.NewDesc("caddy_layer4_foo_proxy_naks_total",
		"NAKs the proxy sent clients itself: no server reachable, or no answer within idle_timeout.", []string{"stats"}, nil)
	descActive = prometheus.NewDesc("caddy_layer4_foo_connections_active",
		"Connections being proxied.", []string{"stats"}, nil)
	descRate = prometheus.NewDesc("caddy_layer4_foo_rate_per_second",
		"Messages per second over a sliding window.", []string{"stats", "direction", "window"}, nil)
	descLatency = prometheus.NewDesc("caddy_layer4_foo_latency_seconds",
		"Request to response latency over the last 4096 answers.", []string{"stats", "quantile"}, nil)
	descPoolConns = prometheus.NewDesc("caddy_layer4_foo_pool_connections",
		"Shared server connections open (pool), by upstream.", []string{"upstream"}, nil)
	descPoolOutstanding = prometheus.NewDesc("caddy_layer4_foo_pool_outstanding",
		"Requests awaiting an answer on shared server connections, by upstream.", []string{"upstream"}, nil)
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descMessages, descInvalid, descProxyNAKs, descActive, descRate, descLatency, descPoolConns, descPoolOutstanding} {
		ch <- d
	}
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range AllSets() {
		r := s.Stats.Report()
		c := func(d *prometheus.Desc, t prometheus.ValueType, v float64, l ...string) {
			ch <- prometheus.MustNewConstMetric(d, t, v, append([]string{s.Name}, l...)...)
		}
		c(descMessages, prometheus.CounterValue, float64(r.MsgReq), "req")
		c(descMessages, prometheus.CounterValue, float64(r.MsgAck), "ack")
		c(descMessages, prometheus.CounterValue, float64(r.MsgNak), "nak")
		c(descInvalid, prometheus.CounterValue, float64(r.InvalidLines))
		c(descProxyNAKs, prometheus.CounterValue, float64(r.ProxyNAKs))
		c(descActive, prometheus.GaugeValue, float64(r.ActiveConns))
		c(descRate, prometheus.GaugeValue, r.RequestRate1s, "request", "1s")
		c(descRate, prometheus.GaugeValue, r.RequestRate10s, "request", "10s")
		c(descRate, prometheus.GaugeValue, r.ResponseRate1s, "response", "1s")
		c(descRate, prometheus.GaugeValue, r.ResponseRate10s, "response", "10s")
		if r.LatencySamples > 0 {
			c(descLatency, prometheus.GaugeValue, r.LatencyP50ms/1000, "0.5")
			c(descLatency, prometheus.GaugeValue, r.LatencyP90ms/1000, "0.9")
			c(descLatency, prometheus.GaugeValue, r.LatencyP99ms/1000, "0.99")
		}
	}
	collectPools(ch)
}

// collectPools reports the shared server connections.
func collectPools(ch chan<- prometheus.Metric) {
	for _, p := range Pools() {
		ch <- prometheus.MustNewConstMetric(descPoolConns, prometheus.GaugeValue, float64(p.Connections), p.Upstream)
		ch <- prometheus.MustNewConstMetric(descPoolOutstanding, prometheus.GaugeValue, float64(p.Outstanding), p.Upstream)
	}
}

func registerMetrics(reg *prometheus.Registry) { metricsreg.Register(reg, collector{}) }
