package tlsclient

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshal(t *testing.T) {
	d := caddyfile.NewTestDispenser(`tls {
		ca /etc/ca.pem
		server_name broker.internal
		cert /etc/client.pem
		key /etc/client.key
		insecure_skip_verify
	}`)
	d.Next()
	got, err := Unmarshal(d)
	want := &Config{CA: "/etc/ca.pem", ServerName: "broker.internal", Cert: "/etc/client.pem",
		Key: "/etc/client.key", InsecureSkipVerify: true}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	for _, bad := range []string{
		"tls extra",
		"tls {\n\tca\n}",
		"tls {\n\tcert a b\n}",
		"tls {\n\tinsecure_skip_verify yes\n}",
		"tls {\n\tverify none\n}",
	} {
		d := caddyfile.NewTestDispenser(bad)
		d.Next()
		if _, err := Unmarshal(d); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{CA: filepath.Join(dir, "missing.pem")}, "tls ca:"},
		{Config{CA: notPEM}, "no certificate in"},
		{Config{Cert: notPEM}, "cert and key go together"},
		{Config{Cert: notPEM, Key: notPEM}, "tls cert:"},
	} {
		if _, err := tc.cfg.Build(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
	if cfg, err := (*Config)(nil).Build(); cfg != nil || err != nil {
		t.Errorf("nil config built %v, %v", cfg, err)
	}
}
