// Package caddyfile holds the example Caddyfiles and their adapt goldens.
// The test adapts every *.caddytest here and every Caddyfile example in
// docs/, compares the JSON, and validates (provisions) the result.
package caddyfile

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/mholt/caddy-l4"

	_ "github.com/caddyprelude/prelude"
)

var update = flag.Bool("update", false, "rewrite the JSON half of each .caddytest")

const separator = "\n----------\n"

func adapt(t *testing.T, name, caddyfile string) []byte {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": name})
	if err != nil {
		t.Fatalf("%s: adapting: %v", name, err)
	}
	for _, w := range warnings {
		t.Errorf("%s: adapt warning: %s", name, w.String())
	}
	return out
}

// validate provisions every module of cfg without starting anything.
func validate(t *testing.T, name string, cfg []byte) {
	t.Helper()
	var c caddy.Config
	if err := json.Unmarshal(cfg, &c); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := caddy.Validate(&c); err != nil {
		t.Fatalf("%s: validating the adapted config: %v", name, err)
	}
}

func sameJSON(a, b []byte) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func indent(b []byte) string {
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "\t"); err != nil {
		return string(b)
	}
	return out.String()
}

func TestCaddytestGoldens(t *testing.T) {
	files, _ := filepath.Glob("*.caddytest")
	if len(files) == 0 {
		t.Fatal("no .caddytest files")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cf, want, ok := strings.Cut(string(raw), separator)
			if !ok {
				t.Fatalf("%s: no %q separator", f, strings.TrimSpace(separator))
			}
			got := adapt(t, f, cf+"\n")
			if *update {
				if err := os.WriteFile(f, []byte(cf+separator+indent(got)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !sameJSON(got, []byte(want)) {
				t.Fatalf("%s adapts to\n%s\nwant\n%s", f, indent(got), want)
			}
			validate(t, f, got)
		})
	}
}

// TestCaddyfilesHaveGoldens: every X.Caddyfile here (such as the demo that
// `make run` serves) has an X.caddytest whose Caddyfile half is the file.
func TestCaddyfilesHaveGoldens(t *testing.T) {
	files, _ := filepath.Glob("*.Caddyfile")
	if len(files) == 0 {
		t.Fatal("no .Caddyfile files")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		golden := strings.TrimSuffix(f, ".Caddyfile") + ".caddytest"
		g, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%s has no golden: %v", f, err)
		}
		cf, _, _ := strings.Cut(string(g), separator)
		if strings.TrimSpace(cf) != strings.TrimSpace(string(raw)) {
			t.Fatalf("%s differs from the Caddyfile half of %s", f, golden)
		}
	}
}

var docBlock = regexp.MustCompile("(?s)```caddyfile\n(.*?)```\\s*\n.*?```json\n(.*?)```")

// TestDocsExamples: in every docs page, each ```caddyfile block followed by
// a ```json block adapts to exactly that JSON.
func TestDocsExamples(t *testing.T) {
	pages, _ := filepath.Glob("../docs/*/*.md")
	more, _ := filepath.Glob("../docs/*.md")
	pages = append(pages, more...)
	pages = append(pages, "../README.md")
	examples := 0
	for _, p := range pages {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range docBlock.FindAllStringSubmatch(string(raw), -1) {
			examples++
			got := adapt(t, p, m[1])
			if !sameJSON(got, []byte(m[2])) {
				t.Errorf("%s: the Caddyfile example adapts to\n%s\nbut the page shows\n%s", p, indent(got), m[2])
				continue
			}
			validate(t, p, got)
		}
	}
	if examples == 0 {
		t.Fatal("no Caddyfile/JSON example pairs found in docs")
	}
}
