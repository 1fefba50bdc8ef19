package farm

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pires/go-proxyproto"
)

// Lease is a connection to a member that counts as live for least_conn and
// max_connections until Release.
type Lease struct {
	Member *Member
	Conn   net.Conn
	done   bool
	route  route
	// drain_moved: the farm watching the lease (handed to the next
	// config's farm at a reload), and whether it was released
	farm     atomic.Pointer[Farm]
	released atomic.Bool
}

// Release ends the lease's count and its hold on the member's shared state.
// It does not close Conn. Safe to call twice.
func (l *Lease) Release() {
	if l != nil && !l.done {
		l.done = true
		l.Member.state.active.Add(-1)
		_, _ = members.Delete(poolKey(l.Member.Addr))
		l.released.Store(true) // before reading farm: see handOverMoves
		if f := l.farm.Load(); f != nil {
			f.unwatchMove(l)
		}
	}
}

// AttemptFunc runs the protocol's replay on a freshly dialed member. It
// returns nil to keep the member, an error to fail over to the next member,
// or an error wrapped with Final to stop and return that error as is.
type AttemptFunc func(ctx context.Context, m *Member, conn net.Conn) error

// Final marks an attempt's error as the member's answer (a broker refusing
// credentials, say): no other member is tried and the member is not marked
// failed.
func Final(err error) error { return finalError{err} }

type finalError struct{ error }

func (e finalError) Unwrap() error { return e.error }

// IsFinal reports whether err was returned through Final.
func IsFinal(err error) bool {
	var fe finalError
	return errors.As(err, &fe)
}

// NoMemberError says that no member could take the connection.
type NoMemberError struct {
	Tried []string // "addr: reason" for each attempt, in order
}

func (e *NoMemberError) Error() string {
	if len(e.Tried) == 0 {
		return "no upstream member available"
	}
	return fmt.Sprintf("no upstream member reachable (%d tried: %s)", len(e.Tried), strings.Join(e.Tried, "; "))
}

// Dial picks members by policy, dials each and runs attempt, failing over
// until one accepts, a Final error comes back, or every member (for
// lb_try_duration, repeatedly) has failed. The context bounds the whole
// operation. On success the caller owns the lease and must Release it.
func (f *Farm) Dial(ctx context.Context, client net.Addr, attempt AttemptFunc) (*Lease, error) {
	return f.dial(ctx, client, "", dialEach(attempt))
}

// ConnectFunc dials the member the farm picked, with its PROXY header and
// TLS.
type ConnectFunc func(ctx context.Context) (net.Conn, error)

// UseFunc takes a client to member m: over a connection it already has to
// m (a pool), or over a new one from connect. The connection it returns,
// if any, is the lease's. Errors mean what AttemptFunc's do.
type UseFunc func(ctx context.Context, m *Member, connect ConnectFunc) (net.Conn, error)

// DialShared is Dial for clients that may share upstream connections: the
// farm picks members by policy and fails over as Dial does, and use decides
// whether to connect. The lease counts the client against the member
// (least_conn, max_connections, drain) whether or not it connected.
func (f *Farm) DialShared(ctx context.Context, client net.Addr, use UseFunc) (*Lease, error) {
	return f.dial(ctx, client, "", use)
}

// DialSticky is Dial with the members ordered by a hash of key instead of
// lb_policy: the same key reaches the same member while the member set is
// unchanged, and the members after it, in order, are its fallbacks.
func (f *Farm) DialSticky(ctx context.Context, client net.Addr, key string, attempt AttemptFunc) (*Lease, error) {
	return f.dial(ctx, client, key, dialEach(attempt))
}

func (f *Farm) dial(ctx context.Context, client net.Addr, key string, use UseFunc) (*Lease, error) {
	if f.table != nil || len(f.templates) > 0 {
		setClientIP(ctx, client)
	}
	cr, err := f.connectionMembers(ctx)
	if err != nil {
		return nil, err
	}
	if cr.via != nil {
		lease, err := cr.via.dial(ctx, client, key, use)
		if err == nil {
			lease.route = cr.rt
			f.watchMove(lease)
		}
		return lease, err
	}
	tryUntil := time.Now().Add(time.Duration(f.LBTryDuration))
	noMember := &NoMemberError{}
	for {
		order, resolveErrs := f.candidates(ctx, client, key, cr.members, cr.only)
		noMember.Tried = append(noMember.Tried, resolveErrs...)
		for _, m := range order {
			if f.MaxConnections > 0 && m.Active() >= int64(f.MaxConnections) {
				noMember.Tried = append(noMember.Tried, m.Addr+": at max_connections")
				continue
			}
			lease, err := f.try(ctx, m, client, use)
			if err == nil {
				lease.route = cr.rt
				f.watchMove(lease)
				return lease, nil
			}
			if IsFinal(err) || ctx.Err() != nil {
				return nil, err
			}
			noMember.Tried = append(noMember.Tried, m.Addr+": "+err.Error())
		}
		wait := time.Duration(f.LBTryInterval)
		if time.Now().Add(wait).After(tryUntil) {
			return nil, noMember
		}
		select {
		case <-ctx.Done():
			return nil, noMember
		case <-time.After(wait):
		}
	}
}

func (f *Farm) try(ctx context.Context, m *Member, client net.Addr, use UseFunc) (*Lease, error) {
	// The lease holds its own reference on the shared state, so that a
	// reload that drops this farm keeps the count while the session lives.
	_, _ = members.LoadOrStore(poolKey(m.Addr), m.state)
	m.state.active.Add(1)
	lease := &Lease{Member: m}
	connect := func(ctx context.Context) (net.Conn, error) {
		conn, err := f.connect(ctx, m, client)
		if err != nil && ctx.Err() == nil {
			f.Emit(EventConnectError, map[string]any{"upstream": m.Addr, "error": trimOpError(err).Error()})
		}
		return conn, err
	}
	conn, err := use(ctx, m, connect)
	if err != nil {
		lease.Release()
		if !IsFinal(err) && ctx.Err() == nil {
			f.markFailed(m)
		}
		return nil, trimOpError(err)
	}
	lease.Conn = conn
	return lease, nil
}

// dialEach is the UseFunc of Dial: a new connection per lease, kept in it.
func dialEach(attempt AttemptFunc) UseFunc {
	return func(ctx context.Context, m *Member, connect ConnectFunc) (net.Conn, error) {
		conn, err := connect(ctx)
		if err != nil {
			return nil, err
		}
		if err := attempt(ctx, m, conn); err != nil {
			_ = conn.Close()
			return nil, err
		}
		return conn, nil
	}
}

// connect dials the member, sends the PROXY header if configured, and
// wraps the connection in TLS for members that want it.
func (f *Farm) connect(ctx context.Context, m *Member, client net.Addr) (net.Conn, error) {
	d := net.Dialer{Timeout: time.Duration(f.DialTimeout)}
	conn, err := d.DialContext(ctx, "tcp", m.Addr)
	if err != nil {
		return nil, err
	}
	if f.ProxyProtocol != "" {
		version := byte(1)
		if f.ProxyProtocol == "v2" {
			version = 2
		}
		local, _ := ctx.Value(localAddrKey{}).(net.Addr)
		if local == nil {
			local = conn.LocalAddr()
		}
		if client == nil {
			client = conn.LocalAddr()
		}
		if _, err := proxyproto.HeaderProxyFromAddrs(version, client, local).WriteTo(conn); err != nil {
			_ = conn.Close()
			return nil, fmt.Errorf("writing the PROXY header: %w", err)
		}
	}
	if m.tls == nil {
		return conn, nil
	}
	tc := tls.Client(conn, m.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("tls: %w", err)
	}
	return tc, nil
}

type localAddrKey struct{}

// WithLocalAddr tells Dial the address the client connected to, for the
// destination of PROXY headers (default: the proxy's own end of the
// upstream connection).
func WithLocalAddr(ctx context.Context, addr net.Addr) context.Context {
	return context.WithValue(ctx, localAddrKey{}, addr)
}

func (f *Farm) markFailed(m *Member) {
	if f.FailDuration > 0 {
		m.state.failedUntil.Store(time.Now().Add(time.Duration(f.FailDuration)).UnixNano())
	}
}

// trimOpError drops the "dial tcp a->b:" prefix: the caller already names the member.
func trimOpError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil && !IsFinal(err) {
		return op.Err
	}
	return err
}

// candidates returns the members in the order to try them: healthy members in
// policy order, then members sitting out a failure as a last resort.
// routed are the connection's own members (connectionMembers): with only,
// they are all of them; else they join the static members.
func (f *Farm) candidates(ctx context.Context, client net.Addr, key string, routed []*Member, only bool) ([]*Member, []string) {
	all, errs := routed, []string(nil)
	if !only {
		all, errs = f.Members(ctx)
		all = append(all, routed...)
	}
	now := time.Now()
	var healthy, failed []*Member
	for _, m := range all {
		if unhealthy, _, why := m.state.health.get(); unhealthy {
			errs = append(errs, m.Addr+": unhealthy ("+why+")")
			continue
		}
		if m.Failed(now) {
			failed = append(failed, m)
		} else {
			healthy = append(healthy, m)
		}
	}
	pick := f.policy
	if key != "" {
		pick = func(_ *Farm, ms []*Member, _ net.Addr) []*Member { return hashOrder(ms, key) }
	}
	order := f.zoneFirst(pick(f, healthy, client))
	if len(failed) > 0 { // policies with state (round robin) advance once per pick
		order = append(order, f.zoneFirst(pick(f, failed, client))...)
	}
	return order, errs
}

// zoneFirst moves the members of prefer_zone to the front, keeping the
// policy's order within each group.
func (f *Farm) zoneFirst(ms []*Member) []*Member {
	if f.PreferZone == "" {
		return ms
	}
	out := make([]*Member, 0, len(ms))
	for _, m := range ms {
		if m.Zone == f.PreferZone {
			out = append(out, m)
		}
	}
	for _, m := range ms {
		if m.Zone != f.PreferZone {
			out = append(out, m)
		}
	}
	return out
}

// Members returns the current members, resolving DNS names whose answers
// are older than dns_refresh. A name that fails to resolve keeps its last
// answers; its error is returned so that callers can report it.
func (f *Farm) Members(ctx context.Context) ([]*Member, []string) {
	var out []*Member
	var errs []string
	seen := map[string]bool{}
	add := func(addr string, opts memberOpts) {
		if !seen[addr] {
			seen[addr] = true
			out = append(out, f.member(addr, opts))
		}
	}
	for _, t := range f.targets {
		if t.ip != nil {
			add(net.JoinHostPort(t.host, t.port), t.opts)
			continue
		}
		if t.srv != "" {
			errs = append(errs, f.srvMembers(ctx, t, add)...)
			continue
		}
		res := f.resolve(ctx, t.host)
		if res.err != nil && len(res.addrs) == 0 {
			errs = append(errs, fmt.Sprintf("%s: %v", t.host, res.err))
		}
		for _, ip := range res.addrs {
			add(net.JoinHostPort(ip, t.port), t.opts)
		}
	}
	f.noteRemoved(seen)
	return out, errs
}

// noteRemoved compares the member set with the previous one and reports
// members that left it to OnRemoved (with drain_removed).
func (f *Farm) noteRemoved(now map[string]bool) {
	f.mu.Lock()
	prev := f.current
	f.current = now
	f.mu.Unlock()
	if !f.DrainRemoved || f.OnRemoved == nil || prev == nil {
		return
	}
	for addr := range prev {
		if !now[addr] {
			f.OnRemoved(addr)
		}
	}
}

// startRefresh re-resolves the members every dns_refresh while the farm
// drains removed members, so that a member dropped from DNS is noticed
// without waiting for the next client.
func (f *Farm) startRefresh(ctx context.Context) {
	if !f.DrainRemoved {
		return
	}
	go every(ctx, time.Duration(f.DNSRefresh), func() { f.Members(ctx) })
}

// Current reports whether addr is a member as of the last resolution
// (static members always are), a dynamic member still kept, or a current
// member of one of the farm's named farms. A member a lookup found is the
// business of drain_moved, not drain_removed.
func (f *Farm) Current(addr string) bool {
	if f.dynamic != nil && f.dynamic.has(addr) {
		return true
	}
	for _, g := range f.Farms {
		if g.Current(addr) {
			return true
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.current != nil {
		return f.current[addr]
	}
	_, ok := f.known[addr]
	return ok
}

// srvMembers adds the members an SRV name points to: each target's
// addresses (resolved like other names) with the record's port.
func (f *Farm) srvMembers(ctx context.Context, t target, add func(string, memberOpts)) []string {
	var errs []string
	res := f.lookup(ctx, "srv:"+t.srv, func(ctx context.Context) ([]string, error) {
		_, recs, err := f.dns.LookupSRV(ctx, "", "", t.srv)
		var out []string
		for _, r := range recs {
			out = append(out, net.JoinHostPort(strings.TrimSuffix(r.Target, "."), strconv.Itoa(int(r.Port))))
		}
		return out, err
	})
	if res.err != nil && len(res.addrs) == 0 {
		errs = append(errs, fmt.Sprintf("srv+%s: %v", t.srv, res.err))
	}
	for _, hp := range res.addrs {
		host, port, _ := net.SplitHostPort(hp)
		if net.ParseIP(host) != nil {
			add(hp, t.opts)
			continue
		}
		hres := f.resolve(ctx, host)
		if hres.err != nil && len(hres.addrs) == 0 {
			errs = append(errs, fmt.Sprintf("%s (from srv+%s): %v", host, t.srv, hres.err))
		}
		for _, ip := range hres.addrs {
			add(net.JoinHostPort(ip, port), t.opts)
		}
	}
	return errs
}

func (f *Farm) resolve(ctx context.Context, name string) resolution {
	return f.lookup(ctx, name, func(ctx context.Context) ([]string, error) {
		ips, err := f.dns.LookupIPAddr(ctx, name)
		var out []string
		for _, ip := range ips {
			out = append(out, ip.IP.String())
		}
		return out, err
	})
}

// lookup returns the cached answers for key, asking again once they are
// older than dns_refresh.
func (f *Farm) lookup(ctx context.Context, key string, ask func(context.Context) ([]string, error)) resolution {
	f.mu.Lock()
	res, ok := f.names[key]
	f.mu.Unlock()
	if ok && time.Since(res.at) < time.Duration(f.DNSRefresh) {
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(f.DialTimeout))
	defer cancel()
	answers, err := ask(ctx)
	fresh := resolution{at: time.Now(), err: err, addrs: answers}
	if err != nil {
		fresh.addrs = res.addrs // keep serving the last good answers
		if dnsErr := (*net.DNSError)(nil); errors.As(err, &dnsErr) {
			fresh.err = errors.New(dnsErr.Err)
		}
		if len(fresh.addrs) == 0 { // nothing to serve: ask again soon
			fresh.at = fresh.at.Add(-time.Duration(f.DNSRefresh) + time.Second)
		}
	}
	f.mu.Lock()
	if f.names != nil {
		f.names[key] = fresh
	}
	f.mu.Unlock()
	return fresh
}
