package relay

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// collector exports the relay's large-buffer use, read at scrape time:
// operators see whether busy sessions hit the limit on 1 MiB buffers.
type collector struct{}

var (
	largeLentDesc = prometheus.NewDesc("caddy_layer4_relay_large_buffers_lent",
		"1 MiB relay buffers lent right now (reads of busy sessions and their pending writes).", nil, nil)
	largeLimitDesc = prometheus.NewDesc("caddy_layer4_relay_large_buffers_limit",
		"Most 1 MiB relay buffers lent at once; past it busy sessions read into 16 KiB buffers.", nil, nil)
	largeFallbacksDesc = prometheus.NewDesc("caddy_layer4_relay_large_buffer_fallbacks_total",
		"Reads that wanted a 1 MiB relay buffer and got a 16 KiB one because the limit was reached.", nil, nil)
)

func (collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- largeLentDesc
	ch <- largeLimitDesc
	ch <- largeFallbacksDesc
}

func (collector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(largeLentDesc, prometheus.GaugeValue, float64(largeBuffers.Lent()))
	ch <- prometheus.MustNewConstMetric(largeLimitDesc, prometheus.GaugeValue, float64(largeBuffers.limit))
	ch <- prometheus.MustNewConstMetric(largeFallbacksDesc, prometheus.CounterValue, float64(largeBuffers.FellBack()))
}

// RegisterMetrics adds the relay's metrics to reg (once per registry):
// every handler that relays calls it from Provision.
func RegisterMetrics(reg *prometheus.Registry) { metricsreg.Register(reg, collector{}) }
