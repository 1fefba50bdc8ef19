package caddyfile

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestPerConnectionRoutingRefusedWhereUnsupported: the handler that does
// not route per connection yet (zmtp) refuses a lookup or placeholders in
// to at load, saying so, instead of failing each connection.
func TestPerConnectionRoutingRefusedWhereUnsupported(t *testing.T) {
	for _, handler := range []string{"zmtp"} {
		for name, farm := range map[string]map[string]any{
			"lookup":       {"lookup": map[string]any{"source": "file", "path": "testdata/git-routes.tsv", "key": "{l4.foo.x}"}},
			"placeholders": {"to": []string{"{env.PRELUDE_NOWHERE}:9000"}},
		} {
			h := map[string]any{"handler": handler}
			for k, v := range farm {
				h[k] = v
			}
			cfg, _ := json.Marshal(map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
				"s": map[string]any{"listen": []string{"127.0.0.1:0"}, "routes": []any{map[string]any{"handle": []any{h}}}}}}}})
			var c caddy.Config
			if err := json.Unmarshal(cfg, &c); err != nil {
				t.Fatal(err)
			}
			err := caddy.Validate(&c)
			if err == nil || !strings.Contains(err.Error(), "does not route per connection yet") {
				t.Errorf("%s with %s: %v, want a refusal saying it is not supported yet", handler, name, err)
			}
		}
	}
}
