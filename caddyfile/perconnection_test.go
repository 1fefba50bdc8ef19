package caddyfile

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// TestPerConnectionRoutingRefusedWithParkedWorkers: the zmtp handler's
// pool of parked workers pairs clients with workers that connected to
// it; a lookup or placeholders in to cannot choose among those, so the
// combination is refused at load, saying so.
func TestPerConnectionRoutingRefusedWithParkedWorkers(t *testing.T) {
	for name, farm := range map[string]map[string]any{
		"lookup":       {"lookup": map[string]any{"source": "file", "path": "testdata/git-routes.tsv", "key": "{l4.zmtp.identity}"}},
		"placeholders": {"to": []string{"{env.PRELUDE_NOWHERE}:9000"}},
	} {
		h := map[string]any{"handler": "zmtp", "workers": "127.0.0.1:0"}
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
		if err == nil || !strings.Contains(err.Error(), "excludes to and lookup") {
			t.Errorf("zmtp workers with %s: %v, want a refusal", name, err)
		}
	}
}
