package farm

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/modules/internal/metricsreg"
)

// memberCollector exports the shared member state of every farm in the
// process as caddy_layer4_farm_member_* gauges, read at scrape time.
type memberCollector struct{}

var (
	activeDesc = prometheus.NewDesc("caddy_layer4_farm_member_connections",
		"Live connections to an upstream member, counted across config reloads.", []string{"member"}, nil)
	failedDesc = prometheus.NewDesc("caddy_layer4_farm_member_failed",
		"1 while an upstream member sits out after a failure (fail_duration), else 0.", []string{"member"}, nil)
)

var healthyDesc = prometheus.NewDesc("caddy_layer4_farm_member_healthy",
	"1 while an upstream member takes connections: it passes its active health check (or has none) and is not sitting out after a failure; else 0.", []string{"member"}, nil)

func (memberCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- activeDesc
	ch <- failedDesc
	ch <- healthyDesc
}

func (memberCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	members.Range(func(k, v any) bool {
		addr := strings.TrimPrefix(k.(string), poolKeyPrefix)
		st := v.(*memberState)
		failed := 0.0
		if st.failedUntil.Load() > now.UnixNano() {
			failed = 1
		}
		ch <- prometheus.MustNewConstMetric(activeDesc, prometheus.GaugeValue, float64(st.active.Load()), addr)
		ch <- prometheus.MustNewConstMetric(failedDesc, prometheus.GaugeValue, failed, addr)
		healthy := 1.0
		if u, _, _ := st.health.get(); u || failed == 1 {
			healthy = 0
		}
		ch <- prometheus.MustNewConstMetric(healthyDesc, prometheus.GaugeValue, healthy, addr)
		return true
	})
}

// registerMetrics adds the member and lookup collectors to reg, once per registry.
func registerMetrics(reg *prometheus.Registry) {
	metricsreg.Register(reg, memberCollector{})
	metricsreg.Register(reg, lookupCollector{})
}
