package e2e

import (
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Relay listens on listen and copies every connection to target, counting
// connections. It stands for a second broker host in front of the one real
// RabbitMQ: the bytes are RabbitMQ's own.
type Relay struct {
	Addr  string
	Conns atomic.Int64
	// Bytes forwarded to the target and back from it, over every connection.
	ToTarget, FromTarget atomic.Int64
	ln                   net.Listener

	mu     sync.Mutex
	live   map[net.Conn]struct{}
	frozen chan struct{} // non-nil while frozen: copying waits for it to close
}

// StartRelay starts a Relay; it stops at the end of the test.
func StartRelay(t testing.TB, listen, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("relay listen %s: %v", listen, err)
	}
	return StartRelayOn(t, ln, target)
}

// StartRelayOn starts a Relay on a listener the test opened (to come back
// on the address of a relay it closed).
func StartRelayOn(t testing.TB, ln net.Listener, target string) *Relay {
	t.Helper()
	r := &Relay{Addr: ln.Addr().String(), ln: ln, live: map[net.Conn]struct{}{}}
	go r.serve(target)
	t.Cleanup(func() { _ = ln.Close(); r.Thaw() })
	return r
}

func (r *Relay) serve(target string) {
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.Conns.Add(1)
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer u.Close()
			r.track(c, u)
			defer r.untrack(c, u)
			go func() { _ = r.copy(u, c, &r.ToTarget); _ = u.(*net.TCPConn).CloseWrite() }()
			_ = r.copy(c, u, &r.FromTarget)
		}()
	}
}

func (r *Relay) track(conns ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range conns {
		r.live[c] = struct{}{}
	}
}

func (r *Relay) untrack(conns ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range conns {
		delete(r.live, c)
	}
}

// copy is io.Copy that holds each chunk while the relay is frozen and adds
// what it writes to count.
func (r *Relay) copy(dst, src net.Conn, count *atomic.Int64) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			r.mu.Lock()
			frozen := r.frozen
			r.mu.Unlock()
			if frozen != nil {
				<-frozen
			}
			w, werr := dst.Write(buf[:n])
			count.Add(int64(w))
			if werr != nil {
				return werr
			}
		}
		if err != nil {
			return err
		}
	}
}

// Cut closes every connection the relay carries, both sides, as a broker
// host dying or a network path failing would.
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.live {
		_ = c.Close()
	}
}

// Freeze stops forwarding without closing anything: the peers see a path
// that went silent. Thaw undoes it.
func (r *Relay) Freeze() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen == nil {
		r.frozen = make(chan struct{})
	}
}

// Thaw resumes forwarding after Freeze.
func (r *Relay) Thaw() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen != nil {
		close(r.frozen)
		r.frozen = nil
	}
}

// DNS is an authoritative DNS server on loopback (UDP and TCP) whose
// A/AAAA answers the test sets.
type DNS struct {
	Addr string
	mu   sync.Mutex
	recs map[string][]net.IP // fqdn -> answers
	srv  map[string][]string // fqdn -> SRV targets as host:port
}

// StartDNS starts a DNS server on a free loopback port, UDP and TCP.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{recs: map[string][]net.IP{}, srv: map[string][]string{}}
	pc, ln := listenUDPAndTCP(t)
	d.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: d}
	tcp := &dns.Server{Listener: ln, Handler: d}
	go func() { _ = udp.ActivateAndServe() }()
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = udp.Shutdown(); _ = tcp.Shutdown() })
	return d
}

// listenUDPAndTCP binds one port for both UDP and TCP, trying again when
// another process took the TCP side of the port the UDP socket got.
func listenUDPAndTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for i := 0; i < 20; i++ {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		lastErr = err
		_ = pc.Close()
	}
	t.Fatalf("no loopback port free for both UDP and TCP: %v", lastErr)
	return nil, nil
}

// Set replaces the answers for name.
func (d *DNS) Set(name string, ips ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var list []net.IP
	for _, s := range ips {
		list = append(list, net.ParseIP(s))
	}
	d.recs[dns.Fqdn(name)] = list
}

// SetSRV replaces the SRV answers for name (such as _amqp._tcp.farm.test)
// with targets given as host:port, all priority 10 and weight 10.
func (d *DNS) SetSRV(name string, targets ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv[dns.Fqdn(name)] = targets
}

// ServeDNS implements dns.Handler.
func (d *DNS) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	d.mu.Lock()
	ips, known := d.recs[q.Question[0].Name]
	srv, knownSRV := d.srv[q.Question[0].Name]
	d.mu.Unlock()
	if !known && !knownSRV {
		m.Rcode = dns.RcodeNameError
	}
	for _, qq := range q.Question {
		if qq.Qtype == dns.TypeSRV {
			for _, hp := range srv {
				host, port, _ := net.SplitHostPort(hp)
				p, _ := strconv.Atoi(port)
				hdr := dns.RR_Header{Name: qq.Name, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: 1}
				m.Answer = append(m.Answer, &dns.SRV{Hdr: hdr, Priority: 10, Weight: 10, Port: uint16(p), Target: dns.Fqdn(host)})
			}
		}
		for _, ip := range ips {
			hdr := dns.RR_Header{Name: qq.Name, Class: dns.ClassINET, Ttl: 1}
			if v4 := ip.To4(); v4 != nil && qq.Qtype == dns.TypeA {
				hdr.Rrtype = dns.TypeA
				m.Answer = append(m.Answer, &dns.A{Hdr: hdr, A: v4})
			} else if v4 == nil && qq.Qtype == dns.TypeAAAA {
				hdr.Rrtype = dns.TypeAAAA
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr, AAAA: ip})
			}
		}
	}
	_ = w.WriteMsg(m)
}

// Remove makes name unknown (NXDOMAIN).
func (d *DNS) Remove(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.recs, dns.Fqdn(name))
}

// Close stops the relay accepting: new connections are refused.
func (r *Relay) Close() { _ = r.ln.Close() }

// Serve accepts connections on ln until the test ends and runs handle on
// each in its own goroutine, closing the connection when handle returns.
// It returns the listener's address.
func Serve(t testing.TB, ln net.Listener, handle func(net.Conn)) string {
	t.Helper()
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// ServeTCP is Serve on a fresh loopback TCP port.
func ServeTCP(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, ln, handle)
}

// Forward copies c to a new connection to target and back, half-closing
// each way at EOF: the body of a relay.
func Forward(c io.ReadWriter, target string) {
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(c, u)
}
