package l4foo

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestHandlerCaddyfile(t *testing.T) {
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("foo {\n to a:1\n idle_timeout off\n}")); err != nil || h.IdleTimeout >= 0 {
		t.Fatalf("idle_timeout off: %v, %v; want a negative (disabled) timeout", err, h.IdleTimeout)
	}
	for in, want := range map[string]string{
		"foo extra":                          "wrong argument count",
		"foo {\n idle_timeout soon\n}":       `idle_timeout: "soon"`,
		"foo {\n idle_timeout 0s\n}":         `idle_timeout: "0s"`,
		"foo {\n max_line -3\n}":             "max_line",
		"foo {\n stats a b\n}":               "wrong argument count",
		"foo {\n frobnicate 1\n}":            `unknown foo handler option "frobnicate"`,
		"foo {\n idle_timeout\n}":            "wrong argument count",
		"foo {\n recovery /a /b\n}":          "wrong argument count",
		"foo {\n idle_timeout 1m 2m\n}":      "wrong argument count",
		"foo {\n max_line lots\n}":           "max_line",
		"foo {\n idle_timeout -5s\n}":        "idle_timeout",
		"foo {\n stats\n}":                   "wrong argument count",
		"foo {\n to\n}":                      "wrong argument count",
		"foo {\n dial_timeout 1s 2s\n}":      "takes one argument",
		"foo {\n idle_timeout off x\n}":      "wrong argument count",
		"foo {\n health_interval no\n}":      "health_interval",
		"foo {\n max_connections -1\n}":      "max_connections",
		"foo {\n recovery\n}":                "wrong argument count",
		"foo {\n max_line 0\n}":              "max_line",
		"foo {\n idle_timeout 1fortnight\n}": "idle_timeout",
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", in, err, want)
		}
	}
}
