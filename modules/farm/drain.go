package farm

import (
	"context"
	"slices"
	"time"

	"github.com/caddyprelude/prelude/lookup"
)

// DrainCheckInterval is how often drain_moved compares the live sessions'
// routes with the lookup's current answers.
const DrainCheckInterval = 250 * time.Millisecond

// EventRouteMoved: a live session's lookup key now routes elsewhere and
// drain_moved ends it. Data: key, upstream.
const EventRouteMoved = "lookup_route_moved"

// route is how a lease was routed by the farm's lookup.
type route struct {
	key  string
	hit  bool   // the table held the key; else the connection went to the default
	set  bool   // the lookup routed it
	farm string // the named farm the answer named, if it named one
}

// watchMove lists a lease for drain_moved.
func (f *Farm) watchMove(l *Lease) {
	if f.table == nil || !f.table.opts.DrainMoved || !l.route.set {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.moving == nil {
		f.moving = map[*Lease]bool{}
	}
	l.farm.Store(f)
	f.moving[l] = false
}

func (f *Farm) unwatchMove(l *Lease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.moving, l)
}

// drainMoved ends each live session whose key now routes elsewhere: the
// key's answer no longer lists its member (also when the key entered the
// table and the session came by the default), it now refuses, or it left
// the table (the session came by it). A failed lookup ends nothing. Each
// session is ended once, through OnMoved (or by closing its upstream
// connection).
func (f *Farm) drainMoved(ctx context.Context) {
	byKey := map[string][]*Lease{}
	f.mu.Lock()
	for l, ended := range f.moving {
		if !ended {
			byKey[l.route.key] = append(byKey[l.route.key], l)
		}
	}
	f.mu.Unlock()
	for key, leases := range byKey {
		ans, found, err := f.table.current(ctx, key)
		if err != nil {
			continue
		}
		for _, l := range leases {
			if stillRouted(l, ans, found) {
				continue
			}
			f.mu.Lock()
			_, live := f.moving[l]
			if live {
				f.moving[l] = true
			}
			f.mu.Unlock()
			if !live {
				continue
			}
			if f.OnMoved == nil {
				_ = l.Conn.Close()
			} else if !f.OnMoved(l.Conn, key) {
				f.mu.Lock()
				if _, live := f.moving[l]; live {
					f.moving[l] = false // not listed yet: try again next time
				}
				f.mu.Unlock()
				continue
			}
			f.Emit(EventRouteMoved, map[string]any{"key": key, "upstream": l.Member.Addr})
		}
	}
}

// stillRouted reports whether a new connection with l's key could go where
// l went: to the named farm the answer names, to a member the answer
// lists, or to the default when the table still does not hold the key.
func stillRouted(l *Lease, ans lookup.Answer, found bool) bool {
	switch {
	case !found:
		return !l.route.hit
	case ans.Refuse != "":
		return false
	case ans.Farm != "" || l.route.farm != "":
		return ans.Farm == l.route.farm
	}
	return slices.Contains(ans.Addrs, l.Member.Addr)
}

// handOverMoves gives the leases f watches for drain_moved to the farm of
// the config that replaces f's (the newest farm with f's name and a
// lookup with the same source and key, and drain_moved), so that sessions
// outlive a config reload without losing their watch. Called at f's
// cleanup, after the new config is provisioned.
func (f *Farm) handOverMoves() {
	if f.table == nil {
		return
	}
	next := f.successor()
	if next == nil {
		return
	}
	f.mu.Lock()
	moving := f.moving
	f.moving = nil
	f.mu.Unlock()
	for l, ended := range moving {
		next.mu.Lock()
		if next.moving == nil {
			next.moving = map[*Lease]bool{}
		}
		next.moving[l] = ended
		next.mu.Unlock()
		l.farm.Store(next)
		// Release stores released before it reads farm: if it read f,
		// this sees released and takes the lease out again.
		if l.released.Load() {
			next.unwatchMove(l)
		}
	}
}

// successor is the newest other farm that can watch f's leases.
func (f *Farm) successor() *Farm {
	farmsMu.Lock()
	defer farmsMu.Unlock()
	var best *Farm
	for g := range farms {
		if g == f || g.Name != f.Name || g.table == nil || !g.table.opts.DrainMoved ||
			g.table.source != f.table.source || g.table.opts.Key != f.table.opts.Key {
			continue
		}
		if best == nil || g.seq > best.seq {
			best = g
		}
	}
	return best
}
