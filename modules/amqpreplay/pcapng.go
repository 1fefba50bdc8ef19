package amqpreplay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/caddyprelude/prelude/amqp"
	"github.com/caddyprelude/prelude/amqp/replay"
)

// readPCAPNG rebuilds the sessions of a pcapng capture written by the amqp
// handler (one synthesised TCP connection per session) with gopacket's
// pcapgo reader. Bytes a capture cut (a body policy) are read as zeros.
func readPCAPNG(r io.Reader, name string) ([]*replay.Session, error) {
	cr := &countingReader{r: r}
	ng, err := pcapgo.NewNgReader(cr, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		return nil, fmt.Errorf("%s: offset %d: not a pcapng file: %v", name, cr.n, err)
	}
	conns := map[string]*tcpSession{}
	var order []*replay.Session
	for {
		data, ci, err := ng.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: offset %d: %v", name, cr.n, err)
		}
		if len(data) == 0 {
			continue
		}
		if ci.CaptureLength < ci.Length {
			data = capturedLength(data) // so that the layers decode what is there
		}
		pkt := gopacket.NewPacket(data, layers.LayerTypeIPv4, gopacket.Lazy)
		if data[0]>>4 == 6 {
			pkt = gopacket.NewPacket(data, layers.LayerTypeIPv6, gopacket.Lazy)
		}
		tcp, ok := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if !ok {
			continue
		}
		src, dst := endpoints(pkt, tcp)
		key := src + ">" + dst
		if tcp.SYN && !tcp.ACK {
			s := &tcpSession{session: &replay.Session{ID: uint64(len(order) + 1)}}
			s.client, s.broker = key, dst+">"+src
			conns[key], conns[s.broker] = s, s
			order = append(order, s.session)
			s.start()
			continue
		}
		s := conns[key]
		if s == nil || len(tcp.Payload) == 0 && ci.Length <= ci.CaptureLength {
			continue
		}
		s.feed(key == s.client, tcp.Payload, ci.Length-ci.CaptureLength, ci)
	}
	return order, nil
}

// capturedLength sets the IP length of a packet cut by the capture to
// the bytes captured.
func capturedLength(p []byte) []byte {
	p = append([]byte(nil), p...)
	switch {
	case p[0]>>4 == 4 && len(p) >= 20:
		binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	case p[0]>>4 == 6 && len(p) >= 40:
		binary.BigEndian.PutUint16(p[4:6], uint16(len(p)-40))
	}
	return p
}

func endpoints(pkt gopacket.Packet, tcp *layers.TCP) (string, string) {
	var sip, dip net.IP
	switch ip := pkt.NetworkLayer().(type) {
	case *layers.IPv4:
		sip, dip = ip.SrcIP, ip.DstIP
	case *layers.IPv6:
		sip, dip = ip.SrcIP, ip.DstIP
	}
	return net.JoinHostPort(sip.String(), fmt.Sprint(int(tcp.SrcPort))), net.JoinHostPort(dip.String(), fmt.Sprint(int(tcp.DstPort)))
}

// tcpSession decodes the two directions of one synthesised connection.
type tcpSession struct {
	session        *replay.Session
	client, broker string
	dec            [2]amqp.Decoder
	track          [2]amqp.FrameTracker // where frames end, to place a cut frame's end
	cut            [2]int               // payload bytes of the current frame the capture cut
	header         int                  // protocol header bytes still to skip
	ci             gopacket.CaptureInfo
}

func (s *tcpSession) start() {
	s.header = amqp.HeaderLen
	for i := range s.dec {
		s.dec[i] = amqp.Decoder{Dir: amqp.Dir(i), KeepBody: -1, MaxPayload: 1 << 24, Emit: s.emit}
	}
}

// feed takes a segment's captured bytes and how many more the capture
// cut: those are read as zeros, but for the frame-end octet when the cut
// ends a frame (a capture cuts only body frames, and every frame starts a
// segment).
func (s *tcpSession) feed(fromClient bool, b []byte, missing int, ci gopacket.CaptureInfo) {
	s.ci = ci
	dir := amqp.FromBroker
	if fromClient {
		dir = amqp.FromClient
		if s.header > 0 {
			k := min(s.header, len(b))
			s.header -= k
			b = b[k:]
		}
	}
	s.track[dir].Feed(b)
	s.dec[dir].Feed(b)
	if missing <= 0 {
		return
	}
	fill := make([]byte, missing)
	if rem, ok := s.track[dir].Remaining(); ok && rem == uint64(missing) {
		fill[missing-1] = amqp.FrameEnd
		missing--
	}
	s.cut[dir] += missing
	s.track[dir].Feed(fill)
	s.dec[dir].Feed(fill)
}

func (s *tcpSession) emit(f *amqp.FrameInfo) {
	if f.Err != nil {
		return
	}
	if f.Type == amqp.FrameMethod && f.Class == amqp.ClassConnection && f.Method == amqp.MethodOpen && f.Dir == amqp.FromClient {
		if _, _, args, err := amqp.DecodeArgs(f.Payload); err == nil {
			s.session.VHost = args.String("virtual-host")
		}
	}
	payload := f.Payload
	if cut := s.cut[f.Dir]; cut > 0 {
		payload = payload[:max(len(payload)-cut, 0)] // the player pads it again, and says so
		s.cut[f.Dir] = 0
	}
	s.session.Frames = append(s.session.Frames, replay.Frame{Dir: f.Dir, Time: s.ci.Timestamp, Channel: f.Channel,
		Type: f.Type, Payload: append([]byte(nil), payload...), Size: f.Size})
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}
