package l4amqp

import (
	"runtime/debug"
	"sync"

	"github.com/caddyprelude/prelude/amqp"
)

const productName = "Caddy Prelude"

// version is this module's version from the build info, "devel" in a
// development build.
var version = sync.OnceValue(func() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/caddyprelude/prelude" {
				return d.Version
			}
		}
		if bi.Main.Path == "github.com/caddyprelude/prelude" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			return bi.Main.Version
		}
	}
	return "devel"
})

// serverCapabilities are the capabilities RabbitMQ advertises that clients
// look for before using the matching features. The proxy relays every
// method after Open, so the broker's support is what counts; these match
// RabbitMQ 3.x.
var serverCapabilities = []string{
	"publisher_confirms", "exchange_exchange_bindings", "basic.nack",
	"consumer_cancel_notify", "connection.blocked", "consumer_priorities",
	"authentication_failure_close", "per_consumer_qos", "direct_reply_to",
}

// startMethod is the Connection.Start the proxy sends in place of a broker.
func (h *Handler) startMethod() *amqp.Start {
	caps := make(amqp.Table, 0, len(serverCapabilities))
	for _, c := range serverCapabilities {
		caps = append(caps, amqp.Field{Name: c, Value: true})
	}
	return &amqp.Start{
		VersionMajor: 0, VersionMinor: 9,
		ServerProperties: amqp.Table{
			{Name: "product", Value: productName},
			{Name: "version", Value: version()},
			{Name: "platform", Value: "Caddy layer4"},
			{Name: "information", Value: "AMQP 0-9-1 vhost-routing proxy; https://github.com/caddyprelude/prelude"},
			{Name: "capabilities", Value: caps},
		},
		Mechanisms: "PLAIN AMQPLAIN",
		Locales:    "en_US",
	}
}

// offeredTune is the configured limits, lowered to the strictest limits any
// broker member has sent this process (learned at each replay).
func (h *Handler) offeredTune() amqp.Tune {
	t := amqp.Tune{ChannelMax: h.ChannelMax, FrameMax: h.FrameMax, Heartbeat: *h.Heartbeat}
	if l, ok := h.limits.strictest(); ok {
		if above(t.ChannelMax, l.ChannelMax) {
			t.ChannelMax = l.ChannelMax
		}
		if above(t.FrameMax, l.FrameMax) {
			t.FrameMax = l.FrameMax
		}
	}
	return t
}

// learnedLimits holds the Tune each broker address last sent. It is shared
// by every handler and config generation in the process.
type learnedLimits struct {
	mu     sync.Mutex
	byAddr map[string]amqp.Tune
}

var sharedLimits = &learnedLimits{byAddr: map[string]amqp.Tune{}}

func (l *learnedLimits) learn(addr string, t amqp.Tune) {
	l.mu.Lock()
	l.byAddr[addr] = t
	l.mu.Unlock()
}

// strictest returns the lowest channel_max and frame_max over all brokers
// seen (0 meaning unlimited), and false if none was seen yet.
func (l *learnedLimits) strictest() (amqp.Tune, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out amqp.Tune
	first := true
	for _, t := range l.byAddr {
		if first || above(out.ChannelMax, t.ChannelMax) {
			out.ChannelMax = t.ChannelMax
		}
		if first || above(out.FrameMax, t.FrameMax) {
			out.FrameMax = t.FrameMax
		}
		first = false
	}
	return out, !first
}
