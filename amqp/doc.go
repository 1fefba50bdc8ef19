// Package amqp is the AMQP 0-9-1 wire code Caddy Prelude needs to play broker
// until Connection.Open: the protocol header, frames, the connection-class
// (class 10) methods, field tables and the PLAIN / AMQPLAIN SASL responses.
//
// It imports only the standard library. Every parser bounds each declared
// length by the bytes actually present before allocating, and reports a short
// input with ErrNeedMore and an impossible one with ErrMalformed.
//
// References: the AMQP 0-9-1 specification (amqp0-9-1.pdf, section 4.2
// "Wire-level format") and RabbitMQ's errata (rabbitmq.com/amqp-0-9-1-errata).
package amqp

import "errors"

var (
	// ErrNeedMore means the input is a valid prefix: more bytes may complete it.
	ErrNeedMore = errors.New("amqp: need more bytes")
	// ErrMalformed means no continuation of the input can be valid.
	ErrMalformed = errors.New("amqp: malformed")
	// ErrFrameTooLarge means a frame declares a payload above the allowed maximum.
	ErrFrameTooLarge = errors.New("amqp: frame too large")
)
