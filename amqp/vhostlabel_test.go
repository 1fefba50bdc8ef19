package amqp

import (
	"strings"
	"testing"
)

func TestVhostLabel(t *testing.T) {
	for in, want := range map[string]string{
		"/":                      "default",
		"":                       "default",
		"orders":                 "orders",
		"/orders":                "orders",
		"Tenant_42.prod":         "tenant-42-prod",
		"//x":                    "x",
		"---":                    "default",
		"café":                   "caf",
		"a/b":                    "a-b",
		strings.Repeat("a", 100): strings.Repeat("a", 63),
		"AMQP\x00\x00\x09\x01":   "amqp",
	} {
		got := VhostLabel(in)
		if got != want {
			t.Errorf("VhostLabel(%q) = %q, want %q", in, got, want)
		}
		if len(got) > 63 || strings.Trim(got, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || strings.HasPrefix(got, "-") {
			t.Errorf("VhostLabel(%q) = %q is not a DNS label", in, got)
		}
	}
}
