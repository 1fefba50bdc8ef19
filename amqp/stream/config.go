// Package stream carries reliable, ordered, flow-controlled byte streams
// through an AMQP 0-9-1 broker, as net.Conn and net.Listener. Two hosts that
// can both reach a broker (behind NAT or firewalls) talk TCP-like through it.
//
// Each direction of a stream is a sequence of messages published, with
// publisher confirms and the mandatory flag, to a queue private to the
// receiving end. Byte offsets, cumulative acknowledgements and go-back-N
// retransmission make delivery exact and ordered even when the broker loses
// or returns a publish; a per-direction window bounds memory on both ends; a
// secret token on every message rejects bytes injected by anyone else. The
// wire protocol is specified in docs/amqp-stream-protocol.md.
package stream

import (
	"crypto/tls"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Defaults for a zero Config.
const (
	DefaultWindow            = 1 << 20
	DefaultMessageSize       = 64 << 10
	DefaultKeepalive         = 5 * time.Second
	DefaultRetransmitTimeout = 2 * time.Second
	DefaultLinger            = 30 * time.Second
	DefaultDialTimeout       = 10 * time.Second
	minWindow                = 4 << 10
	maxAckDelay              = 10 * time.Millisecond
	deliveryAckDelay         = 5 * time.Millisecond
)

// Config tunes streams. The zero value uses the defaults above.
type Config struct {
	// Window is how many bytes each end accepts ahead of its reader, and
	// how many unacknowledged bytes its writer buffers: the memory bound per
	// direction.
	Window int
	// MessageSize is the largest payload carried by one message.
	MessageSize int
	// Keepalive is how long an end stays silent before it sends an ack
	// anyway; KeepaliveTimeout (default 3×Keepalive) is how long it waits
	// without hearing from its peer before the stream fails.
	Keepalive        time.Duration
	KeepaliveTimeout time.Duration
	// RetransmitTimeout is how long unacknowledged data waits before it is
	// sent again.
	RetransmitTimeout time.Duration
	// Linger bounds how long a closed stream keeps delivering what was
	// written before Close.
	Linger time.Duration
	// TLSClientConfig is used for amqps:// URLs by Dial and Listen.
	TLSClientConfig *tls.Config
	// Heartbeat is the AMQP heartbeat of connections Dial and Listen open
	// (amqp091-go's default when zero).
	Heartbeat time.Duration
	// ConnectionName is reported to the broker as connection_name.
	ConnectionName string

	// OnAccept, when set, sees every stream a listener establishes, before
	// Accept returns it (for registries and metrics).
	OnAccept func(*Conn)

	lose func(msg []byte) bool // tests: drop this outgoing message
}

func (c Config) withDefaults() Config {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.Window < minWindow {
		c.Window = minWindow
	}
	if c.MessageSize <= 0 {
		c.MessageSize = DefaultMessageSize
	}
	if c.MessageSize > c.Window {
		c.MessageSize = c.Window
	}
	if c.Keepalive <= 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.KeepaliveTimeout <= 0 {
		c.KeepaliveTimeout = 3 * c.Keepalive
	}
	if c.RetransmitTimeout <= 0 {
		c.RetransmitTimeout = DefaultRetransmitTimeout
	}
	if c.Linger <= 0 {
		c.Linger = DefaultLinger
	}
	return c
}

// prefetch is the consumer prefetch of a stream's queue: enough messages to
// fill the window with full messages, plus room for acks and strays. It
// bounds what the broker pushes at an end whatever the sender does.
func (c Config) prefetch() int {
	return 2*(c.Window/c.MessageSize) + 32
}

// amqpConfig is the amqp091-go configuration for connections this package
// opens itself.
func (c Config) amqpConfig() amqp.Config {
	props := amqp.NewConnectionProperties()
	name := c.ConnectionName
	if name == "" {
		name = "prelude amqp stream"
	}
	props.SetClientConnectionName(name)
	return amqp.Config{
		Heartbeat:       c.Heartbeat,
		TLSClientConfig: c.TLSClientConfig,
		Properties:      props,
		Locale:          "en_US",
	}
}
