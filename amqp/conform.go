package amqp

import (
	"errors"
	"fmt"
)

// Reply codes of the exceptions ClientChannels raises (spec 1.2 "Constants").
const (
	ReplyContentTooLarge = 311
	ReplyChannelError    = 504
)

// Violation is a connection exception a client's frame raises (spec 1.2):
// a broker would answer it by closing the whole connection. A proxy that
// shares a broker connection among clients answers it with its own
// Connection.Close to that client alone.
type Violation struct {
	Code          uint16
	Text          string // "NAME - what happened", as RabbitMQ words its texts
	Class, Method uint16 // the failing method, or 0
}

func (v *Violation) Error() string { return fmt.Sprintf("%d %s", v.Code, v.Text) }

func violation(code uint16, class, method uint16, format string, args ...any) *Violation {
	return &Violation{Code: code, Class: class, Method: method, Text: replyName[code] + " - " + fmt.Sprintf(format, args...)}
}

var replyName = map[uint16]string{
	ReplyContentTooLarge: "CONTENT_TOO_LARGE", ReplyFrameError: "FRAME_ERROR", ReplySyntaxError: "SYNTAX_ERROR",
	ReplyCommandInvalid: "COMMAND_INVALID", ReplyChannelError: "CHANNEL_ERROR", ReplyUnexpectedFrame: "UNEXPECTED_FRAME",
	ReplyNotAllowed: "NOT_ALLOWED", ReplyNotImplemented: "NOT_IMPLEMENTED",
}

// Step is what a checked client frame asks of the proxy.
type Step uint8

// Steps of ClientChannels.Check.
const (
	StepForward        Step = iota // relay it to the broker on the channel's broker id
	StepHeartbeat                  // the client is alive; nothing to relay
	StepDrop                       // a frame on a channel being closed: discard (spec 1.5.2.5)
	StepConnection                 // a channel-0 method for the proxy itself (close, close-ok, update-secret)
	StepChannelOpen                // channel.open of a free channel: give it a broker id, then relay
	StepChannelClose               // the client closes an open channel: relay, wait for the broker's close-ok
	StepChannelCloseOk             // the client's close-ok: relay it (if the broker closed), then free the channel
)

// Checked is one checked client frame.
type Checked struct {
	Step          Step
	Class, Method uint16 // of a method frame
	// EndsContent is set on the frame that completes a message: no channel
	// of the client is left in the middle of one when Pending is 0.
	EndsContent bool
}

// ChannelPhase is where one of the client's channels is in its life.
type ChannelPhase uint8

// Channel phases.
const (
	ChannelFree         ChannelPhase = iota // never opened, or closed by both sides
	ChannelOpen                             // opened (its open-ok may be on the way)
	ChannelClosing                          // the client sent channel.close; the broker's close-ok is due
	ChannelClosedByPeer                     // the broker (or the proxy) sent channel.close; the client's close-ok is due
)

// content phases of a channel
const (
	noContent = iota
	wantHeader
	wantBody
)

type clientChannel struct {
	phase     ChannelPhase
	content   uint8
	remaining uint64 // body bytes still due
}

// ClientChannels checks a client's frames after its handshake, in order,
// against the rules a broker enforces with connection exceptions (spec
// 4.2.3 frames, 4.2.6 content, 1.5.2 channel life, the method table), and
// tracks each channel's phase. It holds no frame: Check decides on each
// frame as it comes. Its memory is one small entry per open channel,
// bounded by ChannelMax.
type ClientChannels struct {
	// The channel_max the client negotiated (0: 65535).
	ChannelMax uint16
	// The largest message body the client may publish; 0: no bound.
	MaxContent uint64

	chans   map[uint16]*clientChannel
	pending int // channels in the middle of a message
}

// Pending is the number of channels in the middle of a message.
func (c *ClientChannels) Pending() int { return c.pending }

// Phase returns channel ch's phase.
func (c *ClientChannels) Phase(ch uint16) ChannelPhase {
	if k := c.chans[ch]; k != nil {
		return k.phase
	}
	return ChannelFree
}

// Channels returns the channels that are not free, in no order.
func (c *ClientChannels) Channels() []uint16 {
	out := make([]uint16, 0, len(c.chans))
	for ch := range c.chans {
		out = append(out, ch)
	}
	return out
}

// PeerClose records a channel.close sent to the client on ch: until its
// close-ok, the client's other frames on ch are dropped. A message the
// client was in the middle of on ch is abandoned.
func (c *ClientChannels) PeerClose(ch uint16) {
	if k := c.chans[ch]; k != nil {
		c.endContent(k)
		k.phase = ChannelClosedByPeer
	}
}

// PeerCloseOk records the broker's close-ok for the client's close of ch:
// the channel is free again.
func (c *ClientChannels) PeerCloseOk(ch uint16) {
	if k := c.chans[ch]; k != nil && k.phase == ChannelClosing {
		delete(c.chans, ch)
	}
}

func (c *ClientChannels) endContent(k *clientChannel) {
	if k.content != noContent {
		k.content, k.remaining = noContent, 0
		c.pending--
	}
}

// Check checks the client's next frame.
func (c *ClientChannels) Check(f Frame) (Checked, error) {
	switch {
	case f.Type == FrameHeartbeat:
		if f.Channel != 0 {
			return Checked{}, violation(ReplyFrameError, 0, 0, "heartbeat frame on channel %d", f.Channel)
		}
		return Checked{Step: StepHeartbeat}, nil
	case f.Type != FrameMethod && f.Type != FrameHeader && f.Type != FrameBody:
		return Checked{}, violation(ReplyFrameError, 0, 0, "unknown frame type %d", f.Type)
	case f.Channel == 0:
		return c.checkConnection(f)
	case c.ChannelMax != 0 && f.Channel > c.ChannelMax:
		return Checked{}, violation(ReplyNotAllowed, 0, 0, "channel %d is above the negotiated channel_max %d", f.Channel, c.ChannelMax)
	}
	k := c.chans[f.Channel]
	if k == nil {
		return c.checkFree(f)
	}
	switch k.phase {
	case ChannelClosing, ChannelClosedByPeer:
		return c.checkClosing(f, k)
	}
	switch k.content {
	case wantHeader:
		return c.checkHeader(f, k)
	case wantBody:
		return c.checkBody(f, k)
	}
	return c.checkMethod(f, k)
}

func (c *ClientChannels) checkConnection(f Frame) (Checked, error) {
	if f.Type != FrameMethod {
		return Checked{}, violation(ReplyChannelError, 0, 0, "a content frame on channel 0")
	}
	class, method, err := checkClientMethod(f.Payload)
	if err != nil {
		return Checked{}, err
	}
	if class != ClassConnection {
		return Checked{}, violation(ReplyChannelError, class, method, "%s on channel 0", FullMethodName(class, method))
	}
	return Checked{Step: StepConnection, Class: class, Method: method}, nil
}

func (c *ClientChannels) checkFree(f Frame) (Checked, error) {
	if f.Type != FrameMethod {
		return Checked{}, violation(ReplyChannelError, 0, 0, "a content frame on channel %d, which is not open", f.Channel)
	}
	class, method, err := checkClientMethod(f.Payload)
	if err != nil {
		return Checked{}, err
	}
	if class != ClassChannel || method != MethodChannelOpen {
		return Checked{}, violation(ReplyChannelError, class, method, "expected 'channel.open' on channel %d, got %s", f.Channel, FullMethodName(class, method))
	}
	if c.chans == nil {
		c.chans = map[uint16]*clientChannel{}
	}
	c.chans[f.Channel] = &clientChannel{phase: ChannelOpen}
	return Checked{Step: StepChannelOpen, Class: class, Method: method}, nil
}

// checkClosing: after a channel.close in either direction only the close
// handshake counts; other frames are discarded (spec 1.5.2.5: "the peer
// ... must discard frames until it receives close-ok").
func (c *ClientChannels) checkClosing(f Frame, k *clientChannel) (Checked, error) {
	if f.Type != FrameMethod {
		return Checked{Step: StepDrop}, nil
	}
	class, method, err := checkClientMethod(f.Payload)
	if err != nil {
		return Checked{}, err
	}
	if class == ClassChannel && method == MethodChannelCloseOk && k.phase == ChannelClosedByPeer {
		delete(c.chans, f.Channel)
		return Checked{Step: StepChannelCloseOk, Class: class, Method: method}, nil
	}
	return Checked{Step: StepDrop, Class: class, Method: method}, nil
}

func (c *ClientChannels) checkMethod(f Frame, k *clientChannel) (Checked, error) {
	if f.Type != FrameMethod {
		return Checked{}, violation(ReplyUnexpectedFrame, 0, 0, "a content %s frame on channel %d outside a message", frameName(f.Type), f.Channel)
	}
	class, method, err := checkClientMethod(f.Payload)
	if err != nil {
		return Checked{}, err
	}
	switch {
	case class == ClassConnection:
		return Checked{}, violation(ReplyCommandInvalid, class, method, "%s on channel %d", FullMethodName(class, method), f.Channel)
	case class == ClassChannel && method == MethodChannelOpen:
		return Checked{}, violation(ReplyChannelError, class, method, "second 'channel.open' for channel %d", f.Channel)
	case class == ClassChannel && method == MethodChannelClose:
		k.phase = ChannelClosing
		return Checked{Step: StepChannelClose, Class: class, Method: method}, nil
	case class == ClassChannel && method == MethodChannelCloseOk:
		return Checked{}, violation(ReplyCommandInvalid, class, method, "'channel.close-ok' on channel %d, which nobody closed", f.Channel)
	case HasContent(class, method):
		k.content = wantHeader
		c.pending++
	}
	return Checked{Step: StepForward, Class: class, Method: method}, nil
}

func (c *ClientChannels) checkHeader(f Frame, k *clientChannel) (Checked, error) {
	if f.Type != FrameHeader {
		return Checked{}, violation(ReplyUnexpectedFrame, 0, 0, "expected a content header on channel %d, got a %s frame", f.Channel, frameName(f.Type))
	}
	_, size, err := CheckContentHeader(f.Payload)
	if err != nil {
		return Checked{}, violation(ReplyFrameError, ClassBasic, MethodBasicPublish, "content header: %s", trimPrefix(err))
	}
	if c.MaxContent != 0 && size > c.MaxContent {
		return Checked{}, violation(ReplyContentTooLarge, ClassBasic, MethodBasicPublish,
			"message body of %d bytes on channel %d is above the proxy's bound of %d", size, f.Channel, c.MaxContent)
	}
	if size == 0 {
		c.endContent(k)
		return Checked{Step: StepForward, EndsContent: true}, nil
	}
	k.content, k.remaining = wantBody, size
	return Checked{Step: StepForward}, nil
}

func (c *ClientChannels) checkBody(f Frame, k *clientChannel) (Checked, error) {
	if f.Type != FrameBody {
		return Checked{}, violation(ReplyUnexpectedFrame, 0, 0, "expected a content body on channel %d (%d bytes due), got a %s frame", f.Channel, k.remaining, frameName(f.Type))
	}
	if uint64(len(f.Payload)) > k.remaining {
		return Checked{}, violation(ReplyFrameError, 0, 0, "content body frame of %d bytes on channel %d, only %d due", len(f.Payload), f.Channel, k.remaining)
	}
	k.remaining -= uint64(len(f.Payload))
	if k.remaining > 0 {
		return Checked{Step: StepForward}, nil
	}
	c.endContent(k)
	return Checked{Step: StepForward, EndsContent: true}, nil
}

// checkClientMethod checks the method's syntax and that clients may send it.
func checkClientMethod(payload []byte) (class, method uint16, err error) {
	class, method, err = CheckMethod(payload)
	switch {
	case errors.Is(err, ErrUnknownMethod):
		return class, method, violation(ReplyNotImplemented, class, method, "unknown method %d.%d", class, method)
	case err != nil:
		return class, method, violation(ReplySyntaxError, class, method, "%s: %s", FullMethodName(class, method), trimPrefix(err))
	case !clientMethods[uint32(class)<<16|uint32(method)]:
		return class, method, violation(ReplyCommandInvalid, class, method, "%s is sent by servers, not clients", FullMethodName(class, method))
	}
	return class, method, nil
}

// clientMethods are the methods a client may send after the handshake
// (amqp0-9-1.xml: the methods whose chassis is "server", plus those both
// peers send: channel.flow(-ok), channel.close(-ok), basic.ack, basic.nack).
var clientMethods = func() map[uint32]bool {
	m := map[uint32]bool{}
	for _, id := range [][2]uint16{
		{ClassConnection, MethodClose}, {ClassConnection, MethodCloseOk}, {ClassConnection, MethodConnectionUpdateSecret},
		{ClassChannel, MethodChannelOpen}, {ClassChannel, 20}, {ClassChannel, 21},
		{ClassChannel, MethodChannelClose}, {ClassChannel, MethodChannelCloseOk},
		{ClassExchange, 10}, {ClassExchange, 20}, {ClassExchange, 30}, {ClassExchange, 40},
		{ClassQueue, 10}, {ClassQueue, 20}, {ClassQueue, 30}, {ClassQueue, 40}, {ClassQueue, 50},
		{ClassBasic, 10}, {ClassBasic, 20}, {ClassBasic, 30}, {ClassBasic, 31}, {ClassBasic, 40}, {ClassBasic, 70},
		{ClassBasic, 80}, {ClassBasic, 90}, {ClassBasic, 100}, {ClassBasic, 110}, {ClassBasic, 120},
		{ClassConfirm, 10}, {ClassTx, 10}, {ClassTx, 20}, {ClassTx, 30},
	} {
		m[uint32(id[0])<<16|uint32(id[1])] = true
	}
	return m
}()

func frameName(t byte) string {
	switch t {
	case FrameMethod:
		return "method"
	case FrameHeader:
		return "header"
	case FrameBody:
		return "body"
	case FrameHeartbeat:
		return "heartbeat"
	}
	return fmt.Sprintf("type %d", t)
}

func trimPrefix(err error) string {
	const p = "amqp: malformed: "
	s := err.Error()
	if len(s) > len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	const q = "amqp: "
	if len(s) > len(q) && s[:len(q)] == q {
		return s[len(q):]
	}
	return s
}
