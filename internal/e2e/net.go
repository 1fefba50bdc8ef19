package e2e

import (
	"io"
	"net"
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
	ln    net.Listener
	wg    sync.WaitGroup
}

// StartRelay starts a Relay; it stops at the end of the test.
func StartRelay(t testing.TB, listen, target string) *Relay {
	t.Helper()
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("relay listen %s: %v", listen, err)
	}
	r := &Relay{Addr: ln.Addr().String(), ln: ln}
	go r.serve(target)
	t.Cleanup(func() { _ = ln.Close() })
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
			go func() { _, _ = io.Copy(u, c); _ = u.(*net.TCPConn).CloseWrite() }()
			_, _ = io.Copy(c, u)
		}()
	}
}

// DNS is an authoritative DNS server on loopback (UDP and TCP) whose
// A/AAAA answers the test sets.
type DNS struct {
	Addr string
	mu   sync.Mutex
	recs map[string][]net.IP // fqdn -> answers
}

// StartDNS starts a DNS server on a free loopback port, UDP and TCP.
func StartDNS(t testing.TB) *DNS {
	t.Helper()
	d := &DNS{recs: map[string][]net.IP{}}
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

// ServeDNS implements dns.Handler.
func (d *DNS) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	d.mu.Lock()
	ips, known := d.recs[q.Question[0].Name]
	d.mu.Unlock()
	if !known {
		m.Rcode = dns.RcodeNameError
	}
	for _, qq := range q.Question {
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
