// Package preludeadmin is admin.api.prelude: Caddy Prelude's runtime
// endpoints under /prelude/ on Caddy's admin API. Configuration itself goes
// through Caddy's own /load and /config.
package preludeadmin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/modules/farm"
	"github.com/caddyprelude/prelude/modules/l4amqpstream"
	"github.com/caddyprelude/prelude/modules/l4foo"
	"github.com/caddyprelude/prelude/modules/l4zmtp"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin serves:
//
//	GET /prelude/foo/stats[?name=<set>]   the stats JSON of a Foo stats set
//	GET /prelude/foo/health[?name=<set>]  200 if a member of its farms accepts a TCP connect, else 503
//	GET /prelude/zmtp/pairs                live ZMTP client-worker pairs
//	GET /prelude/zmtp/workers              parked and busy workers per pool
//	GET /prelude/lookups                   every lookup: size, results, cache
//	GET /prelude/lookups/{name}?key=…      where a client with that key would go
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.prelude",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes returns the admin routes.
func (a Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/prelude/foo/stats", Handler: caddy.AdminHandlerFunc(a.fooStats)},
		{Pattern: "/prelude/foo/health", Handler: caddy.AdminHandlerFunc(a.fooHealth)},
		{Pattern: "/prelude/zmtp/pairs", Handler: caddy.AdminHandlerFunc(getJSON(func() any { return l4zmtp.Pairs() }))},
		{Pattern: "/prelude/zmtp/workers", Handler: caddy.AdminHandlerFunc(getJSON(func() any { return l4zmtp.Pools() }))},
		{Pattern: "/prelude/amqp/", Handler: caddy.AdminHandlerFunc(a.amqpAPI)},
		{Pattern: "/prelude/farms", Handler: caddy.AdminHandlerFunc(getJSON(func() any { return farm.Farms() }))},
		{Pattern: "/prelude/lookups", Handler: caddy.AdminHandlerFunc(getJSON(func() any { return farm.Lookups() }))},
		{Pattern: "/prelude/lookups/", Handler: caddy.AdminHandlerFunc(resolveLookup)},
		{Pattern: "/prelude/tunnels", Handler: caddy.AdminHandlerFunc(getJSON(func() any { return l4amqpstream.Tunnels() }))},
	}
}

func fooSet(r *http.Request) (*l4foo.Set, error) {
	if r.Method != http.MethodGet {
		return nil, caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "default"
	}
	s, ok := l4foo.LookupSet(name)
	if !ok {
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no foo stats set %q in the running config", name)}
	}
	return s, nil
}

func (Admin) fooStats(w http.ResponseWriter, r *http.Request) error {
	s, err := fooSet(r)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(s.Stats.Report())
}

func (Admin) fooHealth(w http.ResponseWriter, r *http.Request) error {
	s, err := fooSet(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	if err := s.Health(ctx); err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return json.NewEncoder(w).Encode(map[string]string{"status": "unhealthy", "reason": err.Error()})
	}
	return json.NewEncoder(w).Encode(map[string]string{"status": "ok"})
}

var _ caddy.AdminRouter = Admin{}

// getJSON serves the value f returns as JSON on GET.
func getJSON(f func() any) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet {
			return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
		}
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(f())
	}
}

// resolveLookup serves GET /prelude/lookups/{name}?key=…: where a client
// with that key would go.
func resolveLookup(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed")}
	}
	name := strings.TrimPrefix(r.URL.Path, "/prelude/lookups/")
	if !r.URL.Query().Has("key") {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("the key to resolve is required: ?key=…")}
	}
	a, ok := farm.ResolveLookup(r.Context(), name, r.URL.Query().Get("key"))
	if !ok {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no lookup named %q in the running config (GET /prelude/lookups lists them)", name)}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(a)
}
