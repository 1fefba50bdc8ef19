// Package l4git holds the Caddy glue for git://: the layer4.matchers.git
// matcher and the layer4.handlers.git handler. The parsing lives in package
// git.
package l4git

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddyprelude/prelude/git"
)

func init() {
	caddy.RegisterModule(&MatchGit{})
}

// MatchGit matches git:// requests. Every option is optional; those given
// must all match (an option matches when any of its values does).
type MatchGit struct {
	// Services: upload-pack, receive-pack, upload-archive.
	Services []string `json:"services,omitempty"`
	// Repository path globs (path.Match), e.g. "/alice/*".
	Repos []string `json:"repos,omitempty"`
	// Host globs against the host= parameter, lowercased, port stripped.
	Hosts []string `json:"hosts,omitempty"`
	// Protocol versions: 0, 1, 2.
	Versions []int `json:"versions,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (*MatchGit) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.matchers.git",
		New: func() caddy.Module { return new(MatchGit) },
	}
}

// Provision lowercases the host globs: hosts compare lowercased, as git
// daemon compares them.
func (m *MatchGit) Provision(caddy.Context) error {
	for i, h := range m.Hosts {
		m.Hosts[i] = strings.ToLower(h)
	}
	return nil
}

// Validate checks services, globs and versions.
func (m *MatchGit) Validate() error {
	for _, s := range m.Services {
		if !slices.Contains(git.Services, s) {
			return fmt.Errorf("services: %q is not one of %s", s, strings.Join(git.Services, ", "))
		}
	}
	for _, globs := range [][]string{m.Repos, m.Hosts} {
		for _, g := range globs {
			if _, err := path.Match(g, ""); err != nil {
				return fmt.Errorf("bad glob %q: %v", g, err)
			}
		}
	}
	for _, v := range m.Versions {
		if v < 0 || v > 2 {
			return fmt.Errorf("versions: %d is not 0, 1 or 2", v)
		}
	}
	return nil
}

// Match parses the first pkt-line from the prefetched bytes. Until it is
// complete the matcher asks for more; a malformed request does not match.
func (m *MatchGit) Match(cx *layer4.Connection) (bool, error) {
	r, _, err := git.ParseRequest(cx.MatchingBytes())
	switch {
	case errors.Is(err, git.ErrNeedMore):
		return false, layer4.ErrConsumedAllPrefetchedBytes
	case err != nil:
		return false, nil
	}
	if !m.matches(r) {
		return false, nil
	}
	setPlaceholders(cx, r)
	return true, nil
}

func (m *MatchGit) matches(r *git.Request) bool {
	return (len(m.Services) == 0 || slices.Contains(m.Services, r.Service)) &&
		(len(m.Repos) == 0 || anyGlob(m.Repos, r.Path)) &&
		(len(m.Hosts) == 0 || anyGlob(m.Hosts, r.Host)) &&
		(len(m.Versions) == 0 || slices.Contains(m.Versions, r.Version))
}

func anyGlob(globs []string, s string) bool {
	for _, g := range globs {
		if ok, _ := path.Match(g, s); ok {
			return true
		}
	}
	return false
}

// setPlaceholders publishes the request's fields as {l4.git.*}.
func setPlaceholders(cx *layer4.Connection, r *git.Request) {
	repl, ok := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	repl.Set("l4.git.service", r.Service)
	repl.Set("l4.git.repo", r.Path)
	repl.Set("l4.git.host", r.Host)
	repl.Set("l4.git.port", r.Port)
	repl.Set("l4.git.version", strconv.Itoa(r.Version))
	repl.Set("l4.git.owner", r.Owner())
}

// UnmarshalCaddyfile sets up the matcher from Caddyfile tokens. Syntax:
//
//	git [service|repo|host|version <values...>]
//	git {
//		service upload-pack|receive-pack|upload-archive ...
//		repo    <glob...>
//		host    <glob...>
//		version 0|1|2 ...
//	}
func (m *MatchGit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // matcher name
	if d.NextArg() {
		if err := m.option(d); err != nil {
			return err
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := m.option(d); err != nil {
			return err
		}
	}
	return m.Validate()
}

func (m *MatchGit) option(d *caddyfile.Dispenser) error {
	opt := d.Val()
	vals := d.RemainingArgs()
	if len(vals) == 0 {
		return d.Errf("git matcher: %s needs at least one value", opt)
	}
	switch opt {
	case "service":
		m.Services = append(m.Services, vals...)
	case "repo":
		m.Repos = append(m.Repos, vals...)
	case "host":
		for _, h := range vals {
			m.Hosts = append(m.Hosts, strings.ToLower(h))
		}
	case "version":
		for _, v := range vals {
			n, err := strconv.Atoi(v)
			if err != nil {
				return d.Errf("git matcher: version %q is not a number", v)
			}
			m.Versions = append(m.Versions, n)
		}
	default:
		return d.Errf("git matcher: unknown option %q", opt)
	}
	return nil
}

// Interface guards
var (
	_ layer4.ConnMatcher    = (*MatchGit)(nil)
	_ caddy.Provisioner     = (*MatchGit)(nil)
	_ caddy.Validator       = (*MatchGit)(nil)
	_ caddyfile.Unmarshaler = (*MatchGit)(nil)
)
