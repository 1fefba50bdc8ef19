package farm

import (
	"testing"

	"github.com/caddyprelude/prelude/lookup"
)

// TestStillRouted: which live sessions drain_moved ends.
func TestStillRouted(t *testing.T) {
	byTable := &Lease{Member: &Member{Addr: "10.0.0.1:5672"}, route: route{key: "v", hit: true, set: true}}
	byDefault := &Lease{Member: &Member{Addr: "10.0.0.9:5672"}, route: route{key: "v", hit: false, set: true}}
	byFarm := &Lease{Member: &Member{Addr: "10.0.0.1:5672"}, route: route{key: "v", hit: true, set: true, farm: "blue"}}
	for _, c := range []struct {
		name  string
		lease *Lease
		ans   lookup.Answer
		found bool
		want  bool
	}{
		{"same member", byTable, lookup.Answer{Addrs: []string{"10.0.0.2:5672", "10.0.0.1:5672"}}, true, true},
		{"moved to another member", byTable, lookup.Answer{Addrs: []string{"10.0.0.2:5672"}}, true, false},
		{"now refused", byTable, lookup.Answer{Refuse: "suspended"}, true, false},
		{"left the table", byTable, lookup.Answer{}, false, false},
		{"still not in the table", byDefault, lookup.Answer{}, false, true},
		{"entered the table, same member", byDefault, lookup.Answer{Addrs: []string{"10.0.0.9:5672"}}, true, true},
		{"entered the table, elsewhere", byDefault, lookup.Answer{Addrs: []string{"10.0.0.1:5672"}}, true, false},
		{"same farm", byFarm, lookup.Answer{Farm: "blue"}, true, true},
		{"moved to another farm", byFarm, lookup.Answer{Farm: "green"}, true, false},
		{"from a farm to its own member's address", byFarm, lookup.Answer{Addrs: []string{"10.0.0.1:5672"}}, true, false},
		{"from an address to a farm", byTable, lookup.Answer{Farm: "blue"}, true, false},
		{"entered the table as a farm", byDefault, lookup.Answer{Farm: "blue"}, true, false},
	} {
		if got := stillRouted(c.lease, c.ans, c.found); got != c.want {
			t.Errorf("%s: stillRouted %v, want %v", c.name, got, c.want)
		}
	}
}
