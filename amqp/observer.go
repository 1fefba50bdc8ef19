package amqp

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Tally counts what a session or one of its channels did, in messages and
// body bytes. Its fields are atomic: one goroutine per direction adds, any
// goroutine reads.
type Tally struct {
	Published, PublishedBytes atomic.Uint64 // Basic.Publish from the client
	Delivered, DeliveredBytes atomic.Uint64 // Basic.Deliver and Basic.Get-Ok to the client
	Acked, Nacked, Rejected   atomic.Uint64 // settled by the client, in messages
	Returned                  atomic.Uint64 // Basic.Return: mandatory and unroutable
	Confirmed, ConfirmNacked  atomic.Uint64 // publisher confirms from the broker, in messages
}

// Counts is a Tally read at one moment, in the JSON the admin API serves.
type Counts struct {
	Published      uint64 `json:"published"`
	PublishedBytes uint64 `json:"published_bytes"`
	Delivered      uint64 `json:"delivered"`
	DeliveredBytes uint64 `json:"delivered_bytes"`
	Acked          uint64 `json:"acked"`
	Nacked         uint64 `json:"nacked"`
	Rejected       uint64 `json:"rejected"`
	Returned       uint64 `json:"returned"`
	Confirmed      uint64 `json:"confirmed"`
	ConfirmNacked  uint64 `json:"confirm_nacked"`
}

// Read returns the tally's counts.
func (t *Tally) Read() Counts {
	return Counts{
		Published: t.Published.Load(), PublishedBytes: t.PublishedBytes.Load(),
		Delivered: t.Delivered.Load(), DeliveredBytes: t.DeliveredBytes.Load(),
		Acked: t.Acked.Load(), Nacked: t.Nacked.Load(), Rejected: t.Rejected.Load(),
		Returned: t.Returned.Load(), Confirmed: t.Confirmed.Load(), ConfirmNacked: t.ConfirmNacked.Load(),
	}
}

// Add adds c to the counts.
func (c *Counts) Add(o Counts) {
	c.Published += o.Published
	c.PublishedBytes += o.PublishedBytes
	c.Delivered += o.Delivered
	c.DeliveredBytes += o.DeliveredBytes
	c.Acked += o.Acked
	c.Nacked += o.Nacked
	c.Rejected += o.Rejected
	c.Returned += o.Returned
	c.Confirmed += o.Confirmed
	c.ConfirmNacked += o.ConfirmNacked
}

// Channel is one open channel of an observed session.
type Channel struct {
	ID      uint16    `json:"id"`
	Opened  time.Time `json:"opened"`
	Confirm bool      `json:"confirm"` // Confirm.Select was sent
	Tx      bool      `json:"tx"`      // Tx.Select was sent
	Counts  Counts    `json:"counts"`

	tally   Tally
	side    [2]channelSide // by Dir: each touched by its direction's goroutine only
	closed  atomic.Bool
	confirm atomic.Bool
	tx      atomic.Bool
}

// channelSide is a channel's state in one direction.
type channelSide struct {
	settled uint64 // highest delivery tag settled (client) or confirmed (broker)
	content uint64 // the content method whose header comes next, or 0
}

// dirState is what one direction's goroutine alone touches.
type dirState struct {
	channels map[uint16]*Channel // cache of Observer.channels
	last     *Channel            // the channel of the last frame: most frames follow one on theirs
}

// Observer turns the frames of both directions of a session into
// statistics: messages and bytes published, delivered, settled, returned
// and confirmed, per channel and in total; channels opened and closed with
// their reply codes; time spent blocked by the broker. Observe must be
// called by one goroutine per direction; the readers (Total, Channels,
// Closes, Blocked) may run concurrently with it.
//
// A Basic.Ack, Nack or Reject with multiple set counts the delivery tags
// above the highest one settled before on that channel: exact for clients
// that settle in order or with multiple, an overcount for one that settles
// out of order singly and then with multiple.
type Observer struct {
	Total Tally

	now  func() time.Time
	dirs [2]dirState

	mu       sync.Mutex
	channels map[uint16]*Channel
	opened   uint64
	closes   map[uint16]uint64 // Channel.Close reply code -> count
	blocked  time.Duration     // completed blocked spells
	since    time.Time         // start of the current spell, or zero
}

// NewObserver returns an Observer; now is the clock (time.Now if nil).
func NewObserver(now func() time.Time) *Observer {
	if now == nil {
		now = time.Now
	}
	o := &Observer{now: now, channels: map[uint16]*Channel{}, closes: map[uint16]uint64{}}
	for i := range o.dirs {
		o.dirs[i] = dirState{channels: map[uint16]*Channel{}}
	}
	return o
}

// Observe counts one frame.
func (o *Observer) Observe(f *FrameInfo) {
	if f.Err != nil || f.Type == FrameHeartbeat || f.Type == FrameBody {
		return
	}
	d := &o.dirs[f.Dir&1]
	if f.Type == FrameHeader {
		o.contentHeader(d, f)
		return
	}
	if f.Channel == 0 {
		o.connectionMethod(f)
		return
	}
	ch := o.channel(d, f.Channel)
	switch f.Class {
	case ClassChannel:
		o.channelMethod(d, ch, f)
	case ClassBasic:
		o.basicMethod(d, ch, f)
	case ClassConfirm:
		if f.Method == MethodConfirmSelect {
			ch.confirm.Store(true)
		}
	case ClassTx:
		if f.Method == 10 {
			ch.tx.Store(true)
		}
	}
}

func (o *Observer) connectionMethod(f *FrameInfo) {
	if f.Class != ClassConnection || f.Dir != FromBroker {
		return
	}
	switch f.Method {
	case MethodConnectionBlocked:
		o.mu.Lock()
		if o.since.IsZero() {
			o.since = o.now()
		}
		o.mu.Unlock()
	case MethodConnectionUnblocked:
		o.mu.Lock()
		if !o.since.IsZero() {
			o.blocked += o.now().Sub(o.since)
			o.since = time.Time{}
		}
		o.mu.Unlock()
	}
}

func (o *Observer) channelMethod(d *dirState, ch *Channel, f *FrameInfo) {
	switch f.Method {
	case MethodChannelOpen:
		o.mu.Lock()
		o.opened++
		o.mu.Unlock()
	case MethodChannelClose:
		code, _ := ReplyCode(f.Payload)
		o.mu.Lock()
		o.closes[code]++
		o.mu.Unlock()
	case MethodChannelCloseOk:
		o.drop(d, f.Channel)
	}
}

func (o *Observer) basicMethod(d *dirState, ch *Channel, f *FrameInfo) {
	switch {
	case HasContent(f.Class, f.Method):
		ch.side[f.Dir&1].content = uint64(f.Method)
		if f.Method == MethodBasicReturn {
			add(&ch.tally.Returned, &o.Total.Returned, 1)
		}
	case f.Method == MethodBasicAck || f.Method == MethodBasicNack || f.Method == MethodBasicReject:
		n := ch.side[f.Dir&1].settle(f)
		switch {
		case f.Dir == FromBroker && f.Method == MethodBasicAck:
			add(&ch.tally.Confirmed, &o.Total.Confirmed, n)
		case f.Dir == FromBroker:
			add(&ch.tally.ConfirmNacked, &o.Total.ConfirmNacked, n)
		case f.Method == MethodBasicAck:
			add(&ch.tally.Acked, &o.Total.Acked, n)
		case f.Method == MethodBasicNack:
			add(&ch.tally.Nacked, &o.Total.Nacked, n)
		default:
			add(&ch.tally.Rejected, &o.Total.Rejected, n)
		}
	}
}

// settle returns how many messages an ack, nack or reject settles.
func (s *channelSide) settle(f *FrameInfo) uint64 {
	tag, multiple, ok := AckArgs(f.Payload)
	if f.Method == MethodBasicReject {
		multiple = false
	}
	if !ok {
		return 1
	}
	last := s.settled
	if tag > last {
		s.settled = tag
	}
	if multiple && tag > last {
		return tag - last
	}
	if multiple {
		return 0
	}
	return 1
}

func (o *Observer) contentHeader(d *dirState, f *FrameInfo) {
	ch := o.channel(d, f.Channel)
	side := &ch.side[f.Dir&1]
	m := uint16(side.content)
	side.content = 0
	size, _ := ContentBodySize(f.Payload)
	switch {
	case m == MethodBasicPublish && f.Dir == FromClient:
		add(&ch.tally.Published, &o.Total.Published, 1)
		add(&ch.tally.PublishedBytes, &o.Total.PublishedBytes, size)
	case (m == MethodBasicDeliver || m == MethodBasicGetOk) && f.Dir == FromBroker:
		add(&ch.tally.Delivered, &o.Total.Delivered, 1)
		add(&ch.tally.DeliveredBytes, &o.Total.DeliveredBytes, size)
	}
}

func add(a, b *atomic.Uint64, n uint64) {
	a.Add(n)
	b.Add(n)
}

// channel returns the live channel id, creating it on first sight.
func (o *Observer) channel(d *dirState, id uint16) *Channel {
	if ch := d.last; ch != nil && ch.ID == id && !ch.closed.Load() {
		return ch
	}
	if ch := d.channels[id]; ch != nil && !ch.closed.Load() {
		d.last = ch
		return ch
	}
	o.mu.Lock()
	ch := o.channels[id]
	if ch == nil {
		ch = &Channel{ID: id, Opened: o.now()}
		o.channels[id] = ch
	}
	o.mu.Unlock()
	d.channels[id] = ch
	d.last = ch
	return ch
}

// drop forgets a closed channel: its id may be reused.
func (o *Observer) drop(d *dirState, id uint16) {
	o.mu.Lock()
	if ch := o.channels[id]; ch != nil {
		ch.closed.Store(true)
		delete(o.channels, id)
	}
	o.mu.Unlock()
	delete(d.channels, id)
	d.last = nil
	// The other direction's cache notices closed on its next frame there.
}

// Channels returns the open channels with their counts, by id.
func (o *Observer) Channels() []Channel {
	o.mu.Lock()
	out := make([]Channel, 0, len(o.channels))
	for _, ch := range o.channels {
		out = append(out, Channel{ID: ch.ID, Opened: ch.Opened, Confirm: ch.confirm.Load(), Tx: ch.tx.Load(), Counts: ch.tally.Read()})
	}
	o.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// ChannelStats returns the channels opened so far and the reply codes of
// the Channel.Close methods seen (either side), by code.
func (o *Observer) ChannelStats() (opened uint64, closes map[uint16]uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	closes = make(map[uint16]uint64, len(o.closes))
	for k, v := range o.closes {
		closes[k] = v
	}
	return o.opened, closes
}

// Blocked returns the time the broker has held the session blocked
// (Connection.Blocked to Unblocked), including a spell still under way.
func (o *Observer) Blocked() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	b := o.blocked
	if !o.since.IsZero() {
		b += o.now().Sub(o.since)
	}
	return b
}
