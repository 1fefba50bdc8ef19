package l4amqp

import (
	"encoding/binary"
	"io"
	"net"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/caddyprelude/prelude/amqp"
)

// The pcapng format: each captured session is a TCP connection between the
// client's and the broker's real addresses, synthesised on a raw-IP
// interface (LINKTYPE_RAW): SYN, SYN-ACK and ACK, the protocol header and
// the handshake as the client saw it, then one segment per relayed AMQP
// frame (frames above maxSegment are split), and FINs at the end. A body
// cut by the body policy is written as a truncated packet (captured length
// below the original length), so sequence numbers stay those of the whole
// stream. Wireshark and tshark decode it with their own AMQP dissector
// (on port 5672; for a broker on another port, `-d tcp.port==<port>,amqp`).
//
// The pcapng blocks are written by gopacket's pcapgo.NgWriter; packets are
// serialised with gopacket/layers.

// maxSegment bounds one synthesised TCP segment's payload (IPv4 lengths are
// 16 bits).
const maxSegment = 32 << 10

type pcapWriter struct {
	ng      *pcapgo.NgWriter
	written int64 // bytes written, for max_bytes
}

type countingWriter struct {
	w io.Writer
	n *int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	*c.n += int64(n)
	return n, err
}

func newPCAPWriter(w io.Writer) (*pcapWriter, error) {
	p := &pcapWriter{}
	intf := pcapgo.DefaultNgInterface
	intf.Name = "caddy-prelude-amqp"
	intf.Description = "AMQP sessions relayed by Caddy Prelude, synthesised TCP/IP"
	intf.LinkType = layers.LinkTypeRaw
	ng, err := pcapgo.NewNgWriterInterface(countingWriter{w, &p.written}, intf, pcapgo.NgWriterOptions{
		SectionInfo: pcapgo.NgSectionInfo{Application: "Caddy Prelude"}})
	if err != nil {
		return nil, err
	}
	p.ng = ng
	return p, p.ng.Flush()
}

// pcapSession is one session's synthesised TCP connection.
type pcapSession struct {
	w                *pcapWriter
	client, broker   net.TCPAddr
	clientSeq, brSeq uint32
	v6               bool
	buf              gopacket.SerializeBuffer // reused packet after packet
	wire             []byte                   // reused for the frame's bytes
}

func (p *pcapWriter) newSession(m *sessionMeta) *pcapSession {
	s := &pcapSession{w: p, client: tcpAddr(m.Client), broker: tcpAddr(m.Broker), buf: gopacket.NewSerializeBuffer()}
	s.v6 = s.client.IP.To4() == nil || s.broker.IP.To4() == nil
	// Initial sequence numbers from the session id: distinct per session.
	s.clientSeq, s.brSeq = uint32(m.ID)*7919, uint32(m.ID)*104729
	return s
}

func tcpAddr(a net.Addr) net.TCPAddr {
	if ta, ok := a.(*net.TCPAddr); ok && ta != nil {
		return *ta
	}
	return net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
}

func (s *pcapSession) open(now time.Time) error {
	if err := s.packet(now, amqp.FromClient, tcpFlags{syn: true}, nil, 0); err != nil {
		return err
	}
	s.clientSeq++
	if err := s.packet(now, amqp.FromBroker, tcpFlags{syn: true, ack: true}, nil, 0); err != nil {
		return err
	}
	s.brSeq++
	if err := s.packet(now, amqp.FromClient, tcpFlags{ack: true}, nil, 0); err != nil {
		return err
	}
	return s.segment(now, amqp.FromClient, amqp.Header091, amqp.HeaderLen)
}

func (s *pcapSession) frame(f *amqp.FrameInfo, now time.Time) error {
	if f.Err != nil {
		return nil // a malformed frame has no known extent; the NDJSON format records it
	}
	b, wireLen := wireFrame(s.wire[:0], f)
	s.wire = b
	for off := 0; off < wireLen; off += maxSegment {
		n := min(maxSegment, wireLen-off)
		kept := b[min(off, len(b)):min(off+n, len(b))]
		if err := s.segment(now, f.Dir, kept, n); err != nil {
			return err
		}
	}
	return nil
}

func (s *pcapSession) close(now time.Time) error {
	if err := s.packet(now, amqp.FromClient, tcpFlags{fin: true, ack: true}, nil, 0); err != nil {
		return err
	}
	s.clientSeq++
	if err := s.packet(now, amqp.FromBroker, tcpFlags{fin: true, ack: true}, nil, 0); err != nil {
		return err
	}
	s.brSeq++
	return s.packet(now, amqp.FromClient, tcpFlags{ack: true}, nil, 0)
}

// segment writes a data segment of length bytes, of which kept are known.
func (s *pcapSession) segment(now time.Time, dir amqp.Dir, kept []byte, length int) error {
	if err := s.packet(now, dir, tcpFlags{ack: true, psh: true}, kept, length); err != nil {
		return err
	}
	if dir == amqp.FromClient {
		s.clientSeq += uint32(length)
	} else {
		s.brSeq += uint32(length)
	}
	return nil
}

type tcpFlags struct{ syn, ack, psh, fin bool }

// packet writes one IP packet whose TCP payload is length bytes long, of
// which the first len(kept) are captured.
func (s *pcapSession) packet(now time.Time, dir amqp.Dir, fl tcpFlags, kept []byte, length int) error {
	src, dst := s.client, s.broker
	seq, ack := s.clientSeq, s.brSeq
	if dir == amqp.FromBroker {
		src, dst, seq, ack = s.broker, s.client, s.brSeq, s.clientSeq
	}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port), DstPort: layers.TCPPort(dst.Port), Seq: seq,
		SYN: fl.syn, ACK: fl.ack, PSH: fl.psh, FIN: fl.fin, Window: 65535}
	if fl.ack {
		tcp.Ack = ack
	}
	var ip gopacket.NetworkLayer
	if s.v6 {
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP, SrcIP: src.IP.To16(), DstIP: dst.IP.To16()}
	} else {
		ip = &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.IP.To4(), DstIP: dst.IP.To4()}
	}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := s.buf
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, ip.(gopacket.SerializableLayer), tcp, gopacket.Payload(kept)); err != nil {
		return err
	}
	data := buf.Bytes()
	full := len(data) + length - len(kept)
	if full != len(data) {
		fixLength(data, s.v6, full)
	}
	return s.w.ng.WritePacket(gopacket.CaptureInfo{Timestamp: now, CaptureLength: len(data), Length: full}, data)
}

// fixLength sets the IP length of a truncated packet to its full length
// (the IPv4 header checksum follows; the TCP checksum cannot be known).
func fixLength(p []byte, v6 bool, full int) {
	if v6 {
		binary.BigEndian.PutUint16(p[4:6], uint16(full-40))
		return
	}
	binary.BigEndian.PutUint16(p[2:4], uint16(full))
	p[10], p[11] = 0, 0
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:12], ^uint16(sum))
}
