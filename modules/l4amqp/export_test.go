package l4amqp

import "github.com/caddyprelude/prelude/amqp"

// ForgetLearnedLimits empties the process-wide record of broker Tune values.
func ForgetLearnedLimits() {
	sharedLimits.mu.Lock()
	sharedLimits.byAddr = map[string]amqp.Tune{}
	sharedLimits.mu.Unlock()
}
