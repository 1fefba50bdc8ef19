package l4amqp

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// handlerMetrics are the caddy_layer4_amqp_* collectors. They are created
// once per process and registered on each config's registry, so counts carry
// across reloads.
type handlerMetrics struct {
	connections *prometheus.CounterVec
	active      *prometheus.GaugeVec
	bytes       *prometheus.CounterVec
	handshake   *prometheus.HistogramVec
}

var (
	metricsOnce    sync.Once
	metrics        *handlerMetrics
	messageMetrics = newMessageCollector()
)

func initMetrics(reg *prometheus.Registry) *handlerMetrics {
	const ns, sub = "caddy", "layer4_amqp"
	metricsOnce.Do(func() {
		metrics = &handlerMetrics{
			connections: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: ns, Subsystem: sub, Name: "connections_total",
				Help: "AMQP client connections by route (the vhost pattern, default or unrouted) and outcome.",
			}, []string{"route", "outcome"}),
			active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Namespace: ns, Subsystem: sub, Name: "sessions_active",
				Help: "AMQP sessions currently relayed, by route.",
			}, []string{"route"}),
			bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: ns, Subsystem: sub, Name: "relayed_bytes_total",
				Help: "Bytes relayed after the handshake, by route and direction (upstream: client to broker).",
			}, []string{"route", "direction"}),
			handshake: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Namespace: ns, Subsystem: sub, Name: "handshake_seconds",
				Help:    "Time from the client's first byte to Open-Ok, for routed sessions (a pause hold included), by route.",
				Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
			}, []string{"route"}),
		}
	})
	metricsreg.Register(reg, metrics.connections, metrics.active, metrics.bytes, metrics.handshake, messageMetrics)
	return metrics
}
