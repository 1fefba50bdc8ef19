package farm

import (
	"context"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/lookup"
)

// template is a to or upstream address with placeholders, and the
// upstream block's options for the members it expands to.
type template struct {
	addr string
	opts memberOpts
}

// isTemplate reports whether a to address holds placeholders, to be
// expanded per connection.
func isTemplate(addr string) bool { return strings.Contains(addr, "{") }

// expandAddress expands a to address's placeholders with the connection's
// values (WithReplacer). A value that is empty or holds a character that
// would change the address's shape (':' '/' '@' '[' ']' '{' '}' or white
// space), and an expansion that is not host:port, are refused with a
// NoRouteError: such an address is never dialed. The error goes to the
// client: it names the template, and shows only values the client sent.
func expandAddress(ctx context.Context, tmpl string) (string, error) {
	addr, err := replacerOf(ctx).ReplaceFunc(tmpl, func(name string, val any) (any, error) {
		s := caddy.ToString(val)
		if val == nil || s == "" {
			return nil, fmt.Errorf("placeholder {%s} is empty", name)
		}
		if i := strings.IndexAny(s, ":/@[]{} \t\r\n"); i >= 0 {
			if !fromConnection(name) {
				return nil, fmt.Errorf("placeholder {%s} has a value with %q", name, s[i])
			}
			return nil, fmt.Errorf("placeholder {%s} is %q, with %q", name, s, s[i])
		}
		return s, nil
	})
	if err != nil {
		return "", &NoRouteError{Key: tmpl, Reason: err.Error()}
	}
	if isTemplate(addr) {
		return "", &NoRouteError{Key: tmpl, Reason: "a placeholder has no value"}
	}
	if err := lookup.CheckAddress(addr); err != nil {
		return "", &NoRouteError{Key: tmpl, Reason: "the expanded address is not host:port with a valid host and port"}
	}
	return addr, nil
}

// fromConnection reports whether a placeholder's value came from the
// client (the handlers' {l4.*}): only those are shown back to it in a
// refusal. Others ({env.*}, {file.*}, …) are the operator's and may name
// internal hosts.
func fromConnection(name string) bool { return strings.HasPrefix(name, "l4.") }

// PerConnection reports whether the farm's members depend on the
// connection (a lookup, or to addresses with placeholders): then they are
// known only once the connection's placeholders are.
func (f *Farm) PerConnection() bool {
	if f.HasLookup() {
		return true
	}
	for _, a := range f.To {
		if isTemplate(a) {
			return true
		}
	}
	for _, u := range f.Upstreams {
		if isTemplate(u.Address) {
			return true
		}
	}
	return false
}
