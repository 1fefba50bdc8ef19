package farm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/lookup"
)

// Named farms are the farms a lookup's answer may name instead of listing
// addresses (amqpprox's "vhost → farm" mapping, kept in a table or a
// service): a key that moves between clusters changes one word, and each
// cluster keeps its own members, policy, health checks, limits and TLS in
// the config.

// validateNamed checks the farms' names and that they are plain farms.
func (f *Farm) validateNamed() error {
	if len(f.Farms) > 0 && !f.HasLookup() {
		return errors.New("farms: only a farm with a lookup has named farms (its answers name them)")
	}
	for name, g := range f.Farms {
		if err := lookup.CheckFarmName(name); err != nil {
			return fmt.Errorf("farms: %v", err)
		}
		if g == nil {
			return fmt.Errorf("farms %s: no options", name)
		}
		if g.HasLookup() || len(g.Farms) > 0 {
			return fmt.Errorf("farms %s: a named farm has neither a lookup nor farms of its own", name)
		}
	}
	return nil
}

// provisionNamed provisions the named farms, with f's health probe and
// drain hook, each named "<f's name> farm <name>" in GET /prelude/farms.
func (f *Farm) provisionNamed(ctx caddy.Context) error {
	names := make([]string, 0, len(f.Farms))
	for name := range f.Farms {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		g := f.Farms[name]
		g.Name = f.Name + " farm " + name
		g.probe = f.probe
		g.OnRemoved = f.OnRemoved
		if err := g.Provision(ctx); err != nil {
			return fmt.Errorf("farms %s: %v", name, err)
		}
	}
	return nil
}

func (f *Farm) cleanupNamed() {
	for _, g := range f.Farms {
		_ = g.Cleanup()
	}
}
