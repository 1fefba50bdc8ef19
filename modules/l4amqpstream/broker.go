// Package l4amqpstream is the Caddy glue for TCP over AMQP (package
// amqp/stream): the layer4.handlers.amqp_tunnel handler carries accepted
// connections into streams, the "amqp" listener network lets layer4 servers
// accept streams from a queue, and the amqp_brokers app names brokers once
// for both.
package l4amqpstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/caddyprelude/prelude/amqp/stream"
	"github.com/caddyprelude/prelude/modules/internal/tlsclient"
)

// Broker is where streams travel and how: the broker URL, TLS for amqps://,
// and the stream tuning. The handler embeds it; the amqp_brokers app names
// brokers for listeners (and handlers) to refer to.
type Broker struct {
	// amqp:// or amqps:// URL with credentials and vhost. Never logged or
	// returned by the prelude admin API with its password. Environment
	// placeholders ({env.AMQP_URL}) are replaced at load, so that the
	// password need not be in the config that Caddy's /config/ returns.
	URL string `json:"url,omitempty"`
	// TLS to the broker for amqps:// URLs.
	TLS *tlsclient.Config `json:"tls,omitempty"`
	// Bytes each end accepts ahead of its reader; the memory bound per
	// direction. Default 1 MiB.
	Window int `json:"window,omitempty"`
	// Largest payload per AMQP message. Default 64 KiB.
	MessageSize int `json:"message_size,omitempty"`
	// An idle end sends an ack this often. Default 5s.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`
	// A stream whose peer is silent this long fails. Default 3×keepalive.
	KeepaliveTimeout caddy.Duration `json:"keepalive_timeout,omitempty"`
	// Unacknowledged data is sent again after this long. Default 2s.
	RetransmitTimeout caddy.Duration `json:"retransmit_timeout,omitempty"`
	// Time allowed to connect to the broker and to open a stream. Default 10s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// AMQP heartbeat of the broker connection. Default 10s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	url string // URL with its placeholders replaced
}

// validate checks the broker settings; errors name the field and never the
// URL's password.
func (b *Broker) validate() error {
	b.url = caddy.NewReplacer().ReplaceAll(b.URL, "")
	if b.url == "" {
		return errors.New("url: a broker URL (amqp:// or amqps://) is required")
	}
	if _, err := amqp.ParseURI(b.url); err != nil {
		return fmt.Errorf("url: %s is not an AMQP URL (amqp://user:pass@host:port/vhost)", stream.RedactURL(b.url))
	}
	if b.Window < 0 || b.MessageSize < 0 {
		return errors.New("window, message_size: must not be negative")
	}
	_, err := b.TLS.Build()
	return err
}

// streamConfig returns the library configuration for this broker.
func (b *Broker) streamConfig() (stream.Config, error) {
	tlsCfg, err := b.TLS.Build()
	if err != nil {
		return stream.Config{}, err
	}
	hb := time.Duration(b.Heartbeat)
	if hb == 0 {
		hb = 10 * time.Second
	}
	return stream.Config{
		Window:            b.Window,
		MessageSize:       b.MessageSize,
		Keepalive:         time.Duration(b.Keepalive),
		KeepaliveTimeout:  time.Duration(b.KeepaliveTimeout),
		RetransmitTimeout: time.Duration(b.RetransmitTimeout),
		TLSClientConfig:   tlsCfg,
		Heartbeat:         hb,
		ConnectionName:    "caddy prelude amqp tunnel",
	}, nil
}

func (b *Broker) dialTimeout() time.Duration {
	if b.DialTimeout > 0 {
		return time.Duration(b.DialTimeout)
	}
	return stream.DefaultDialTimeout
}

// connections shares one AMQP connection per broker (URL, TLS, heartbeat)
// among every handler, listener and stream that uses it, across config
// reloads: the key's last user closes it.
var connections = caddy.NewUsagePool()

// sharedConn is one pooled broker connection, reopened on demand after the
// broker dropped it.
type sharedConn struct {
	url string
	cfg stream.Config

	mu   sync.Mutex
	conn *amqp.Connection
}

// Destruct closes the connection when its last user is gone.
func (s *sharedConn) Destruct() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		_ = s.conn.Close()
		s.conn = nil
	}
	return nil
}

// get returns the open connection, connecting if there is none.
func (s *sharedConn) get(ctx context.Context) (*amqp.Connection, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.IsClosed() {
		return s.conn, nil
	}
	conn, err := s.cfg.Connect(ctx, s.url)
	if err != nil {
		return nil, err
	}
	s.conn = conn
	return conn, nil
}

// poolKey identifies a broker connection: everything that shapes it.
func (b *Broker) poolKey() string {
	key, _ := json.Marshal(struct {
		URL       string
		TLS       *tlsclient.Config
		Heartbeat caddy.Duration
	}{b.url, b.TLS, b.Heartbeat})
	return string(key)
}

// acquireConn takes a reference on the broker's shared connection; call
// release when done with it.
func (b *Broker) acquireConn() (s *sharedConn, release func(), err error) {
	cfg, err := b.streamConfig()
	if err != nil {
		return nil, nil, err
	}
	key := b.poolKey()
	v, _, err := connections.LoadOrNew(key, func() (caddy.Destructor, error) {
		return &sharedConn{url: b.url, cfg: cfg}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	return v.(*sharedConn), func() { once.Do(func() { _, _ = connections.Delete(key) }) }, nil
}
