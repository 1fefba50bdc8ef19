package farm

import (
	"hash/fnv"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
)

// policy orders the candidate members for one connection: the first is the
// policy's pick, the rest are the failover order.
type policy func(f *Farm, ms []*Member, client net.Addr) []*Member

var policies = map[string]policy{
	"first":       func(_ *Farm, ms []*Member, _ net.Addr) []*Member { return ms },
	"round_robin": roundRobin,
	"random":      random,
	"least_conn":  leastConn,
	"ip_hash":     ipHash,
}

func policyNames() string {
	names := make([]string, 0, len(policies))
	for n := range policies {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

func rotate(ms []*Member, start int) []*Member {
	if len(ms) == 0 {
		return ms
	}
	start %= len(ms)
	return append(slices.Clone(ms[start:]), ms[:start]...)
}

func roundRobin(f *Farm, ms []*Member, _ net.Addr) []*Member {
	return rotate(ms, int(f.rr.Add(1)-1))
}

func random(_ *Farm, ms []*Member, _ net.Addr) []*Member {
	out := slices.Clone(ms)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// leastConn orders by live connections; ties keep a round-robin rotation so
// that idle members share new connections evenly.
func leastConn(f *Farm, ms []*Member, _ net.Addr) []*Member {
	out := roundRobin(f, ms, nil)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Active() < out[j].Active() })
	return out
}

// ipHash starts at a member chosen by the client's IP, so one client keeps
// reaching the same member while the member set is unchanged; the members
// after it, in order, are its fallbacks.
func ipHash(_ *Farm, ms []*Member, client net.Addr) []*Member {
	if client == nil {
		return hashOrder(ms, "")
	}
	host, _, err := net.SplitHostPort(client.String())
	if err != nil {
		host = client.String()
	}
	return hashOrder(ms, host)
}

func hashOrder(ms []*Member, key string) []*Member {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return rotate(ms, int(h.Sum32()%uint32(max(len(ms), 1))))
}
