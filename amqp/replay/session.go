// Package replay plays the client side of captured AMQP 0-9-1 sessions
// against a broker and reports where the broker answered differently. It
// reads Caddy Prelude's NDJSON captures; its caller may build sessions from
// any other format (the pcapng reader lives with the Caddy command).
package replay

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/caddyprelude/prelude/amqp"
)

// Frame is one captured frame.
type Frame struct {
	Dir     amqp.Dir
	Time    time.Time
	Channel uint16
	Type    byte
	// The payload as captured: whole for method and header frames; a body
	// frame's first bytes (all unless the capture cut it).
	Payload []byte
	Size    uint32 // the payload size on the wire
}

// Session is one captured session, its frames in capture order.
type Session struct {
	ID                          uint64
	VHost, User, ConnectionName string
	Frames                      []Frame
}

// ReadNDJSON reads the sessions of an NDJSON capture, in the order they
// opened. name labels errors, which give the byte offset of the bad line.
func ReadNDJSON(r io.Reader, name string) ([]*Session, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	byID := map[uint64]*Session{}
	var order []*Session
	var off int64
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if perr := addLine(byID, &order, line); perr != nil {
				return nil, fmt.Errorf("%s: offset %d: %v", name, off, perr)
			}
			off += int64(len(line))
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: offset %d: %v", name, off, err)
		}
	}
	return order, nil
}

// ndjsonLine is what replay needs of a capture line.
type ndjsonLine struct {
	Time     time.Time `json:"time"`
	Session  uint64    `json:"session"`
	Event    string    `json:"event"`
	Dir      string    `json:"dir"`
	Channel  uint16    `json:"channel"`
	Type     string    `json:"type"`
	Raw      string    `json:"raw"`
	BodySize uint32    `json:"body_size"`
	Body     string    `json:"body"`
	VHost    string    `json:"vhost"`
	User     string    `json:"user"`
	ConnName string    `json:"connection_name"`
}

func addLine(byID map[uint64]*Session, order *[]*Session, b []byte) error {
	var l ndjsonLine
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("not a capture line: %v", err)
	}
	if l.Session == 0 {
		if l.Event == "dropped" {
			return nil // a trace's marker
		}
		return errors.New("line without a session id")
	}
	s := byID[l.Session]
	if l.Event == "open" {
		if s != nil {
			return fmt.Errorf("session %d opens twice", l.Session)
		}
		s = &Session{ID: l.Session, VHost: l.VHost, User: l.User, ConnectionName: l.ConnName}
		byID[l.Session] = s
		*order = append(*order, s)
		return nil
	}
	if l.Event != "" {
		return nil // close and other events
	}
	if s == nil {
		return fmt.Errorf("frame of session %d before its open line", l.Session)
	}
	f := Frame{Time: l.Time, Channel: l.Channel}
	switch l.Dir {
	case "client":
		f.Dir = amqp.FromClient
	case "broker":
		f.Dir = amqp.FromBroker
	default:
		return fmt.Errorf("dir %q is not client or broker", l.Dir)
	}
	var err error
	switch l.Type {
	case "method":
		f.Type = amqp.FrameMethod
		f.Payload, err = base64.StdEncoding.DecodeString(l.Raw)
		if err == nil && len(f.Payload) < 4 {
			err = errors.New("method frame without class and method ids")
		}
	case "header":
		f.Type = amqp.FrameHeader
		f.Payload, err = base64.StdEncoding.DecodeString(l.Raw)
	case "body":
		f.Type = amqp.FrameBody
		f.Payload, err = base64.StdEncoding.DecodeString(l.Body)
	case "heartbeat":
		f.Type = amqp.FrameHeartbeat
	case "malformed":
		return nil // nothing to replay
	default:
		return fmt.Errorf("frame type %q", l.Type)
	}
	if err != nil {
		return fmt.Errorf("%s frame: %v", l.Type, err)
	}
	f.Size = uint32(len(f.Payload))
	if f.Type == amqp.FrameBody {
		f.Size = l.BodySize
	}
	s.Frames = append(s.Frames, f)
	return nil
}

// Select keeps the sessions whose ids are in ids (all when ids is empty).
func Select(ss []*Session, ids []uint64) ([]*Session, error) {
	if len(ids) == 0 {
		return ss, nil
	}
	byID := map[uint64]*Session{}
	for _, s := range ss {
		byID[s.ID] = s
	}
	var out []*Session
	for _, id := range ids {
		s := byID[id]
		if s == nil {
			have := make([]uint64, 0, len(byID))
			for k := range byID {
				have = append(have, k)
			}
			sort.Slice(have, func(i, j int) bool { return have[i] < have[j] })
			return nil, fmt.Errorf("no session %d in the capture (it has %v)", id, have)
		}
		out = append(out, s)
	}
	return out, nil
}
