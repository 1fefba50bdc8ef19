package farm

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddyprelude/prelude/lookup"
)

// Lookup results, as counted per lookup (metrics, GET /prelude/lookups).
const (
	resultHit     = iota // a route was found
	resultMiss           // the source holds no such key
	resultRefused        // the answer refuses the client
	resultStale          // a route past its TTL, served because the service failed
	resultError          // the lookup failed: nothing could be served
	numResults
)

var resultNames = [numResults]string{"hit", "miss", "refused", "stale", "error"}

// lookupCounters count a lookup's results.
type lookupCounters [numResults]atomic.Uint64

func (c *lookupCounters) snapshot() map[string]uint64 {
	m := make(map[string]uint64, numResults)
	for i := range c {
		m[resultNames[i]] = c[i].Load()
	}
	return m
}

// Registry of provisioned lookups, for GET /prelude/lookups and metrics.
// During a config reload the new config's lookups are listed beside the
// old ones until the old config is cleaned up.
var (
	lookupsMu sync.Mutex
	lookups   []*lookupState
)

func registerLookup(l *lookupState) {
	lookupsMu.Lock()
	defer lookupsMu.Unlock()
	lookups = append(lookups, l)
}

func unregisterLookup(l *lookupState) {
	lookupsMu.Lock()
	defer lookupsMu.Unlock()
	lookups = slices.DeleteFunc(lookups, func(x *lookupState) bool { return x == l })
}

func listLookups() []*lookupState {
	lookupsMu.Lock()
	defer lookupsMu.Unlock()
	return slices.Clone(lookups)
}

// LookupStatus is one lookup as GET /prelude/lookups reports it. Where is
// the file, URL or server without any password.
type LookupStatus struct {
	Name    string             `json:"name"`
	Source  string             `json:"source"`
	Where   string             `json:"where"`
	Key     string             `json:"key"`
	Size    int                `json:"size"` // keys in the table, or answers in the cache
	Results map[string]uint64  `json:"results"`
	Cache   *lookup.CacheStats `json:"cache,omitempty"`
	// A file's last reload error, while the last good table is in use.
	Error string `json:"error,omitempty"`
}

func (l *lookupState) status() LookupStatus {
	ss := l.src.Status()
	return LookupStatus{Name: l.name, Source: l.source, Where: ss.Where, Key: l.opts.Key, Size: ss.Size,
		Results: l.counts.snapshot(), Cache: ss.Cache, Error: ss.Error}
}

// Lookups is every lookup of the loaded configs.
func Lookups() []LookupStatus {
	out := []LookupStatus{}
	for _, l := range listLookups() {
		out = append(out, l.status())
	}
	slices.SortStableFunc(out, func(a, b LookupStatus) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	return out
}

// LookupAnswer is where a client with a key would go, for
// GET /prelude/lookups/{name}?key=.
type LookupAnswer struct {
	Lookup string   `json:"lookup"`
	Key    string   `json:"key"`
	Found  bool     `json:"found"`
	To     []string `json:"to,omitempty"`
	Refuse string   `json:"refuse,omitempty"`
	// The named farm the answer names, and that farm's to addresses.
	Farm   string   `json:"farm,omitempty"`
	FarmTo []string `json:"farm_to,omitempty"`
	// For a key not found: the farm's default (its to addresses), if any.
	Default []string `json:"default,omitempty"`
	// How it was answered: "table" (file), "hit", "fetched", "stale" or
	// "failed" (http and redis).
	Result string `json:"result"`
	Error  string `json:"error,omitempty"`
}

// ResolveLookup answers key as the newest lookup named name would for a
// client (through its cache: a key not cached is fetched and then
// cached), without counting it as a client's lookup. ok is false when no
// lookup has that name.
func ResolveLookup(ctx context.Context, name, key string) (LookupAnswer, bool) {
	var l *lookupState
	for _, x := range listLookups() {
		if x.name == name {
			l = x
		}
	}
	if l == nil {
		return LookupAnswer{}, false
	}
	a := LookupAnswer{Lookup: name, Key: key}
	if len(key) > lookup.MaxKeyLen {
		a.Result, a.Error = "failed", "the key is longer than 1024 bytes"
		return a, true
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ans, found, r, err := l.src.Resolve(ctx, key)
	a.Found, a.Result = found, r.String()
	if l.source == "file" {
		a.Result = "table"
	}
	if err != nil {
		a.Error = err.Error()
	}
	a.To, a.Refuse, a.Farm = ans.Addrs, ans.Refuse, ans.Farm
	if a.Farm != "" {
		if g := l.farms[a.Farm]; g != nil {
			a.FarmTo = g.To
		} else {
			a.Error = "the answer names a farm this config does not define; clients with this key are refused"
		}
	}
	if !a.Found && a.Error == "" {
		a.Default = l.defaults
	}
	return a, true
}

// lookupCollector exports every lookup's counters at scrape time.
type lookupCollector struct{}

var (
	lookupResultsDesc = prometheus.NewDesc("caddy_layer4_lookup_results_total",
		"Lookups by result (hit, miss, refused, stale, error), per lookup; counted per config generation.", []string{"lookup", "result"}, nil)
	lookupFetchesDesc = prometheus.NewDesc("caddy_layer4_lookup_fetches_total",
		"Requests an http or redis lookup sent to its service; counted per config generation.", []string{"lookup"}, nil)
	lookupSizeDesc = prometheus.NewDesc("caddy_layer4_lookup_entries",
		"Keys in a file lookup's table, or answers in an http or redis lookup's cache.", []string{"lookup"}, nil)
)

func (lookupCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lookupResultsDesc
	ch <- lookupFetchesDesc
	ch <- lookupSizeDesc
}

func (lookupCollector) Collect(ch chan<- prometheus.Metric) {
	newest := map[string]LookupStatus{} // a reload lists two generations under one name for a moment
	for _, st := range Lookups() {
		newest[st.Name] = st
	}
	for name, st := range newest {
		for k, v := range st.Results {
			ch <- prometheus.MustNewConstMetric(lookupResultsDesc, prometheus.CounterValue, float64(v), name, k)
		}
		if st.Cache != nil {
			ch <- prometheus.MustNewConstMetric(lookupFetchesDesc, prometheus.CounterValue, float64(st.Cache.Fetches), name)
		}
		ch <- prometheus.MustNewConstMetric(lookupSizeDesc, prometheus.GaugeValue, float64(st.Size), name)
	}
}
