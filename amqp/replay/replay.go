package replay

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// Target is the broker a session is replayed against.
type Target struct {
	// Dial opens the connection (TCP, or TLS for amqps).
	Dial           func(ctx context.Context) (net.Conn, error)
	User, Password string
	// VHost overrides the captured vhost when not empty.
	VHost string
}

// Options tune a replay.
type Options struct {
	// Speed > 0 paces the client frames at the captured pace divided by
	// Speed; 0 sends them as fast as the replies allow.
	Speed float64
	// Wait bounds each wait for a reply or a delivery. Default 10s.
	Wait time.Duration
}

// Report is what one session's replay did and where the broker differed.
type Report struct {
	Session     uint64   `json:"session"`
	VHost       string   `json:"vhost"`
	Sent        int      `json:"sent"`    // client frames sent
	Skipped     int      `json:"skipped"` // on channels the broker had closed
	Notes       []string `json:"notes,omitempty"`
	Differences []string `json:"differences,omitempty"`
}

func (r *Report) differ(format string, args ...any) {
	r.Differences = append(r.Differences, fmt.Sprintf(format, args...))
}

// Replay plays s's client side against t and compares the broker's
// answers with the captured ones: each synchronous reply (method, and the
// reply code of a Close), and per channel the messages delivered,
// confirmed and returned. Server-named queues, consumer tags, delivery tags
// and direct reply-to names are mapped from the captured values to the new
// ones. It returns an
// error only when the replay could not run (no connection); every
// difference, refusals included, is in the report.
func Replay(ctx context.Context, s *Session, t Target, o Options) (*Report, error) {
	if o.Wait <= 0 {
		o.Wait = 10 * time.Second
	}
	r := &Report{Session: s.ID, VHost: s.VHost}
	if t.VHost != "" {
		r.VHost = t.VHost
	}
	conn, err := t.Dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	p := newPlayer(s, conn, r, o)
	if !p.handshake(t) {
		return r, nil
	}
	go p.readFrames()
	p.play()
	p.compareTotals()
	return r, nil
}

// event is a frame the target sent, or the end of its stream.
type event struct {
	f   amqp.Frame
	err error
}

// player replays one session. Its state is touched by play's goroutine
// only; readFrames hands frames over through events.
type player struct {
	s      *Session
	conn   net.Conn
	r      *Report
	o      Options
	events chan event
	gone   bool // the target's stream ended

	captured, replayed *amqp.Observer
	replayDec          amqp.Decoder

	queues    map[string]string // captured server-named queue -> replayed
	consumers map[string]string // captured consumer tag -> replayed
	// Per channel: captured delivery tags in order, and replayed ones.
	capturedTags map[uint16]map[uint64]int
	replayedTags map[uint16][]uint64
	closed       map[uint16]bool // channels the target closed
	replies      map[uint16][]amqp.Frame
	// The broker's captured Channel.Closes, by channel and description.
	capturedCloses map[uint16]map[string]bool
	// Direct reply-to: the broker names each requester's reply address
	// (amq.rabbitmq.reply-to.…) in the reply-to property of the request it
	// delivers; a responder publishes its reply to that name. Captured
	// names map to the delivery that carried them, and replayed deliveries'
	// names are kept by channel and delivery index.
	capturedReplyTo map[string]deliveryRef
	replayedReplyTo map[uint16][]string
	headerOf        map[uint16]bool // a delivery's content header is due on the channel
	// What the captured broker had sent so far, and the target: a client
	// frame waits until the target has caught up (catchUp).
	capturedSeen, replayedSeen seen
	diverged                   map[uint16]bool
}

// deliveryRef is the n-th delivery on a channel.
type deliveryRef struct {
	ch uint16
	n  int
}

// directReplyTo is the prefix of the names RabbitMQ gives requesters.
const directReplyTo = "amq.rabbitmq.reply-to."

func newPlayer(s *Session, conn net.Conn, r *Report, o Options) *player {
	p := &player{s: s, conn: conn, r: r, o: o, events: make(chan event, 1024),
		captured: amqp.NewObserver(nil), replayed: amqp.NewObserver(nil),
		queues: map[string]string{}, consumers: map[string]string{},
		capturedTags: map[uint16]map[uint64]int{}, replayedTags: map[uint16][]uint64{},
		closed: map[uint16]bool{}, replies: map[uint16][]amqp.Frame{}, capturedCloses: map[uint16]map[string]bool{},
		capturedReplyTo: map[string]deliveryRef{}, replayedReplyTo: map[uint16][]string{}, headerOf: map[uint16]bool{},
		capturedSeen: seen{}, replayedSeen: seen{}, diverged: map[uint16]bool{}}
	pendingHeader := map[uint16]bool{}
	p.replayDec = amqp.Decoder{Dir: amqp.FromBroker, Emit: p.replayed.Observe}
	for i := range s.Frames {
		f := &s.Frames[i]
		if f.Dir == amqp.FromBroker && isMethod(f, amqp.ClassChannel, amqp.MethodChannelClose) {
			if p.capturedCloses[f.Channel] == nil {
				p.capturedCloses[f.Channel] = map[string]bool{}
			}
			p.capturedCloses[f.Channel][describe(f.Payload)] = true
		}
		if f.Dir == amqp.FromBroker && f.Type == amqp.FrameMethod && isDelivery(f.Payload) {
			tag := deliveryTag(f.Payload)
			m := p.capturedTags[f.Channel]
			if m == nil {
				m = map[uint64]int{}
				p.capturedTags[f.Channel] = m
			}
			m[tag] = len(m)
			pendingHeader[f.Channel] = true
		}
		if f.Dir == amqp.FromBroker && f.Type == amqp.FrameHeader && pendingHeader[f.Channel] {
			delete(pendingHeader, f.Channel)
			// A requester's name is the same in all its requests: the first
			// delivery that carried it says which replayed name it is.
			if r := replyTo(f.Payload); strings.HasPrefix(r, directReplyTo) {
				if _, seen := p.capturedReplyTo[r]; !seen {
					p.capturedReplyTo[r] = deliveryRef{ch: f.Channel, n: len(p.capturedTags[f.Channel]) - 1}
				}
			}
		}
	}
	return p
}

// readFrames forwards the target's frames to play until the stream ends.
func (p *player) readFrames() {
	for {
		f, err := amqp.ReadFrame(p.conn, 1<<24)
		if err != nil {
			p.events <- event{err: err}
			close(p.events)
			return
		}
		p.events <- event{f: f}
	}
}

// handshake opens the connection as the captured client did, with the
// target's credentials. A refusal is reported as a difference.
func (p *player) handshake(t Target) bool {
	_ = p.conn.SetDeadline(time.Now().Add(p.o.Wait))
	defer p.conn.SetDeadline(time.Time{})
	if _, err := p.conn.Write(amqp.Header091); err != nil {
		p.r.differ("connection: %v", err)
		return false
	}
	if _, ok := p.expect(amqp.MethodStart); !ok {
		return false
	}
	props := amqp.Table{}
	tuneOk := amqp.TuneOk{ChannelMax: 2047, FrameMax: 131072}
	for _, f := range p.handshakeFrames() {
		c, m, args, err := amqp.DecodeArgs(f.Payload)
		if err != nil || c != amqp.ClassConnection {
			continue
		}
		switch m {
		case amqp.MethodStartOk:
			if v, ok := args.Get("client-properties"); ok {
				props, _ = v.(amqp.Table)
			}
		case amqp.MethodTuneOk:
			tuneOk.ChannelMax, _ = args[0].Value.(uint16)
			tuneOk.FrameMax, _ = args[1].Value.(uint32)
		}
	}
	// Bad credentials then get Close 403 from RabbitMQ, not a dropped socket.
	caps, _ := props.Get("capabilities")
	capTable, _ := caps.(amqp.Table)
	props = append(amqp.Table(nil), props...).Set("capabilities",
		append(amqp.Table(nil), capTable...).Set("authentication_failure_close", true))
	response := append(append([]byte{0}, t.User...), 0)
	response = append(response, t.Password...)
	if !p.send(0, &amqp.StartOk{ClientProperties: props, Mechanism: "PLAIN", Response: response, Locale: "en_US"}) {
		return false
	}
	tm, ok := p.expect(amqp.MethodTune)
	if !ok {
		return false
	}
	tune := tm.(*amqp.Tune)
	if tune.FrameMax != 0 && (tuneOk.FrameMax == 0 || tuneOk.FrameMax > tune.FrameMax) {
		tuneOk.FrameMax = tune.FrameMax
	}
	if tune.ChannelMax != 0 && (tuneOk.ChannelMax == 0 || tuneOk.ChannelMax > tune.ChannelMax) {
		tuneOk.ChannelMax = tune.ChannelMax
	}
	tuneOk.Heartbeat = 0 // the replay sends no heartbeats; it asks for none
	if !p.send(0, &tuneOk) || !p.send(0, &amqp.Open{VirtualHost: p.r.VHost}) {
		return false
	}
	_, ok = p.expect(amqp.MethodOpenOk)
	return ok
}

// handshakeFrames are the captured handshake's client methods.
func (p *player) handshakeFrames() []Frame {
	var out []Frame
	for _, f := range p.s.Frames {
		if f.Dir == amqp.FromClient && f.Channel == 0 && f.Type == amqp.FrameMethod {
			out = append(out, f)
			if id := methodID(f.Payload); id == amqp.MethodOpen {
				break
			}
		}
	}
	return out
}

// expect reads the target's next connection method during the handshake.
func (p *player) expect(want uint16) (amqp.Method, bool) {
	for {
		f, err := amqp.ReadFrame(p.conn, 1<<24)
		if err != nil {
			p.r.differ("connection: the broker ended the handshake while the replay waited for %s: %v",
				amqp.MethodName(amqp.ClassConnection, want), err)
			return nil, false
		}
		if f.Type == amqp.FrameHeartbeat {
			continue
		}
		m, err := amqp.ParseMethod(f.Payload)
		if err != nil {
			p.r.differ("connection: %v", err)
			return nil, false
		}
		if c, ok := m.(*amqp.Close); ok {
			p.send(0, &amqp.CloseOk{})
			p.r.differ("connection: the broker refused it: Connection.Close %d %s", c.ReplyCode, c.ReplyText)
			return nil, false
		}
		if class, id := m.MethodID(); class != amqp.ClassConnection || id != want {
			p.r.differ("connection: got %s, want %s", amqp.MethodName(class, id), amqp.MethodName(amqp.ClassConnection, want))
			return nil, false
		}
		return m, true
	}
}

func (p *player) send(ch uint16, m amqp.Method) bool {
	b, err := amqp.AppendMethodFrame(nil, ch, m)
	if err == nil {
		_, err = p.conn.Write(b)
	}
	if err != nil {
		p.r.differ("connection: %v", err)
		return false
	}
	return true
}

func (p *player) write(f amqp.Frame) bool {
	if _, err := p.conn.Write(amqp.AppendFrame(nil, f)); err != nil {
		if !p.gone {
			p.r.differ("connection: writing to the broker: %v", err)
		}
		p.gone = true
		return false
	}
	p.r.Sent++
	return true
}
