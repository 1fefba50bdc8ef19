package caddyfile

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestLookupSourcesAreModules: the sources are guest modules of the
// layer4.lookups namespace, so `caddy list-modules` shows them and a
// plugin can add one.
func TestLookupSourcesAreModules(t *testing.T) {
	for _, id := range []string{"layer4.lookups.file", "layer4.lookups.http", "layer4.lookups.redis"} {
		if _, err := caddy.GetModule(id); err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
}

// TestLookupConfigErrors: a bad lookup fails the Caddyfile or the load
// with a message naming what is wrong.
func TestLookupConfigErrors(t *testing.T) {
	wrap := func(lookup string) string {
		return "{\n\tlayer4 {\n\t\t127.0.0.1:9419 {\n\t\t\troute {\n\t\t\t\tgit {\n\t\t\t\t\t" + lookup + "\n\t\t\t\t}\n\t\t\t}\n\t\t}\n\t}\n}\n"
	}
	for cf, want := range map[string]string{
		"lookup ldap ldap://x { \n key {l4.git.owner}\n }":                    `unknown source "ldap"`,
		"lookup http http://x/{key} {\n key {l4.git.owner}\n refresh 1s\n }":  `lookup http: unknown option "refresh"`,
		"lookup file routes.tsv {\n key {l4.git.owner}\n ttl 1s\n }":          `lookup file: unknown option "ttl"`,
		"lookup redis redis://x {\n key {l4.git.owner}\n max_entries 0\n }":   `max_entries: "0" is not a positive integer`,
		"lookup redis redis://x {\n key {l4.git.owner}\n stale soon\n }":      `stale:`,
		"lookup http {\n key {l4.git.owner}\n }":                              `wrong argument count`,
		"lookup redis redis://x {\n key {l4.git.owner}\n drain_moved yes\n }": `wrong argument count`,
		"lookup http http://x/{key} {\n key a\n key b c\n }":                  `takes one argument`,
		"farm blue {\n to a:1\n }\n farm blue {\n to b:1\n }":                 `farm blue: defined twice`,
		"farm blue {\n lookup file x {\n key k\n }\n }":                       `neither a lookup nor farms`,
		"farm blue {\n nope 1\n }":                                            `farm blue: unknown option "nope"`,
		"farm {\n to a:1\n }":                                                 `wrong argument count`,
		"max_dynamic_members 0":                                               `not a positive integer`,
	} {
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(wrap(cf)), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", cf, err, want)
		}
	}
	for lookup, want := range map[string]string{
		`{"source": "file", "path": "testdata/git-routes.tsv"}`:                        "a key is required",
		`{"source": "file", "key": "k"}`:                                               "a path is required",
		`{"source": "file", "key": "k", "path": "testdata/nope.tsv"}`:                  "no such file",
		`{"source": "http", "key": "k", "url": "http://x/route"}`:                      "must hold {key}",
		`{"source": "http", "key": "k", "url": "ftp://x/{key}"}`:                       "http:// or https://",
		`{"source": "redis", "key": "k", "url": "mysql://x"}`:                          "does not parse",
		`{"source": "redis", "key": "k", "url": "redis://x", "ttl": -1}`:               "must not be negative",
		`{"source": "ldap", "key": "k"}`:                                               "layer4.lookups.ldap",
		`{"source": "file", "key": "k", "path": "testdata/git-routes.tsv", "nope": 1}`: "unknown field",
	} {
		cfg := `{"apps": {"layer4": {"servers": {"s": {"listen": ["127.0.0.1:0"], "routes": [{"handle": [{"handler": "git", "lookup": ` + lookup + `}]}]}}}}}`
		var c caddy.Config
		if err := json.Unmarshal([]byte(cfg), &c); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Validate(&c); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error containing %q", lookup, err, want)
		}
	}
}
