package l4git

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// gitMetrics are the caddy_layer4_git_* collectors, created once per process
// and registered on each config's registry.
type gitMetrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

var (
	metricsOnce sync.Once
	metrics     *gitMetrics
)

func initMetrics(reg *prometheus.Registry) *gitMetrics {
	const ns, sub = "caddy", "layer4_git"
	metricsOnce.Do(func() {
		metrics = &gitMetrics{
			requests: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: ns, Subsystem: sub, Name: "requests_total",
				Help: "git:// requests handled, by service and outcome.",
			}, []string{"service", "outcome"}),
			bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: ns, Subsystem: sub, Name: "relayed_bytes_total",
				Help: "Bytes relayed, by service and direction (upstream: client to server), counted when a connection ends.",
			}, []string{"service", "direction"}),
		}
	})
	metricsreg.Register(reg, metrics.requests, metrics.bytes)
	return metrics
}
