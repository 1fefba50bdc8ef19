// Package metricsreg registers collectors on a config's Prometheus
// registry, tolerating the re-registration every config reload brings.
package metricsreg

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Register adds each collector to reg unless it is already there. Any other
// registration error is a programming error (a clashing metric name) and
// panics, as prometheus.MustRegister does.
func Register(reg *prometheus.Registry, cs ...prometheus.Collector) {
	if reg == nil {
		return
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err)
			}
		}
	}
}
