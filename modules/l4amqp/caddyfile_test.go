package l4amqp

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestHandlerCaddyfileErrors(t *testing.T) {
	cases := map[string]string{
		"amqp extra":                                                  "wrong argument count",
		"amqp {\n vhost {\n to a:1\n }\n}":                            "at least one vhost name",
		"amqp {\n vhost / {\n}\n}":                                    "a 'to' with at least one upstream",
		"amqp {\n vhost / {\n bogus 1\n }\n}":                         `unknown farm option "bogus"`,
		"amqp {\n vhost / {\n to\n }\n}":                              "wrong argument count",
		"amqp {\n frobnicate\n}":                                      `unknown amqp handler option "frobnicate"`,
		"amqp {\n handshake_timeout soon\n}":                          "handshake_timeout",
		"amqp {\n channel_max 70000\n}":                               "channel_max",
		"amqp {\n default {\n to a:1\n }\n default {\n to b:1\n }\n}": "default: given twice",
		"amqp {\n vhost / {\n to a:1\n max_connections -2\n }\n}":     "max_connections",
		"amqp {\n vhost / {\n to a:1\n dial_timeout 1s 2s\n }\n}":     "takes one argument",
	}
	for in, want := range cases {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error containing %q", in, err, want)
		}
	}
}

func TestMatcherCaddyfile(t *testing.T) {
	for in, want := range map[string]string{
		"amqp":                      "",
		"amqp version 1.0":          "1.0",
		"amqp {\n version 0-9-1\n}": "0-9-1",
		"amqp version 2.0":          "error",
		"amqp colour blue":          "error",
		"amqp version 1.0 extra":    "error",
		"amqp {\n version 1.0 x\n}": "error",
	} {
		var m MatchAMQP
		err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in))
		if (err != nil) != (want == "error") || (err == nil && m.Version != want) {
			t.Errorf("%q: version %q, err %v; want %q", in, m.Version, err, want)
		}
	}
}
