package l4zmtp

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// Results of a pairing attempt, for caddy_layer4_zmtp_pairings_total.
const (
	resultPaired            = "paired"
	resultMechanismRefused  = "mechanism_refused"
	resultNoWorker          = "no_worker"
	resultWorkerUnreachable = "worker_unreachable"
	resultBadGreeting       = "bad_greeting"
	resultNoRoute           = "no_route"       // a lookup holds no route for the key, or failed
	resultLookupRefused     = "lookup_refused" // a lookup's answer refuses the client
)

var (
	metricsOnce sync.Once
	pairings    *prometheus.CounterVec
	holdTime    prometheus.Histogram
)

var (
	descPairs  = prometheus.NewDesc("caddy_layer4_zmtp_pairs_active", "Live client-worker pairs.", nil, nil)
	descParked = prometheus.NewDesc("caddy_layer4_zmtp_parked_workers", "Workers parked in a pool, by mechanism.", []string{"pool", "mechanism"}, nil)
)

type collector struct{}

func (collector) Describe(ch chan<- *prometheus.Desc) { ch <- descPairs; ch <- descParked }

func (collector) Collect(ch chan<- prometheus.Metric) {
	pairsMu.Lock()
	n := len(pairs)
	pairsMu.Unlock()
	ch <- prometheus.MustNewConstMetric(descPairs, prometheus.GaugeValue, float64(n))
	for _, p := range Pools() {
		for mech, k := range p.Parked {
			ch <- prometheus.MustNewConstMetric(descParked, prometheus.GaugeValue, float64(k), p.Pool, mech)
		}
	}
}

func initMetrics(reg *prometheus.Registry) {
	metricsOnce.Do(func() {
		pairings = prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "caddy", Subsystem: "layer4_zmtp", Name: "pairings_total",
			Help: "Client connections by pairing result.",
		}, []string{"result"})
		holdTime = prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "caddy", Subsystem: "layer4_zmtp", Name: "hold_seconds",
			Help:    "Time clients of a worker pool waited for an idle worker.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		})
	})
	metricsreg.Register(reg, pairings, holdTime, collector{})
}
