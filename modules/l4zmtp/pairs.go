package l4zmtp

import (
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyprelude/prelude/modules/internal/tcpinfo"
)

// Pair is one live client-worker pairing.
type Pair struct {
	ID        uint64    `json:"id"`
	Client    string    `json:"client"`
	Worker    string    `json:"worker"`
	Mechanism string    `json:"mechanism"`
	Pool      string    `json:"pool,omitempty"`
	Since     time.Time `json:"since"`
	// Bytes so far, from the kernel's TCP_INFO of the client socket (the
	// relay's copies report their counts only when they end).
	BytesUpstream   uint64 `json:"bytes_upstream"`
	BytesDownstream uint64 `json:"bytes_downstream"`

	client net.Conn
}

var (
	pairsMu sync.Mutex
	pairs   = map[uint64]*Pair{} // by ID: O(1) add, remove and lookup
	pairSeq atomic.Uint64
)

func addPair(p *Pair) *Pair {
	p.ID = pairSeq.Add(1)
	pairsMu.Lock()
	pairs[p.ID] = p
	pairsMu.Unlock()
	return p
}

func removePair(id uint64) {
	pairsMu.Lock()
	delete(pairs, id)
	pairsMu.Unlock()
}

// Pairs returns the live pairs, oldest first, with byte counts read now.
func Pairs() []Pair {
	pairsMu.Lock()
	out := make([]Pair, 0, len(pairs))
	for _, p := range pairs {
		out = append(out, *p)
	}
	pairsMu.Unlock()
	for i := range out {
		out[i].BytesUpstream, out[i].BytesDownstream = tcpinfo.Bytes(out[i].client)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// PoolState is one pool's parked workers per mechanism and its busy pairs.
type PoolState struct {
	Pool   string         `json:"pool"`
	Parked map[string]int `json:"parked"`
	Busy   int            `json:"busy"`
}

// Pools returns the state of every pool a loaded config names.
func Pools() []PoolState {
	busy := map[string]int{}
	pairsMu.Lock()
	for _, p := range pairs {
		if p.Pool != "" {
			busy[p.Pool]++
		}
	}
	pairsMu.Unlock()
	var out []PoolState
	pools.Range(func(_, v any) bool {
		p := v.(*pool)
		out = append(out, PoolState{Pool: p.name, Parked: p.counts(), Busy: busy[p.name]})
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Pool < out[j].Pool })
	return out
}
