// Package tlsclient is the TLS client configuration shared by the modules
// that connect to upstreams over TLS (farm members, tunnel brokers), with
// its Caddyfile block.
package tlsclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddyprelude/prelude/modules/internal/cfutil"
)

// Config configures TLS to an upstream.
type Config struct {
	// PEM file of the CA that signed the upstream's certificate (default:
	// the system roots).
	CA string `json:"ca,omitempty"`
	// Name to verify the upstream's certificate against (default: the
	// address's host).
	ServerName string `json:"server_name,omitempty"`
	// PEM files of a client certificate and its key, for upstreams that
	// require one.
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	// Skip verifying the upstream's certificate (tests only).
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
}

// Build returns the crypto/tls configuration; nil for a nil Config.
func (c *Config) Build() (*tls.Config, error) {
	if c == nil {
		return nil, nil
	}
	cfg := &tls.Config{ServerName: c.ServerName, InsecureSkipVerify: c.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if c.CA != "" {
		pem, err := os.ReadFile(c.CA)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca: no certificate in %s", c.CA)
		}
	}
	if (c.Cert == "") != (c.Key == "") {
		return nil, errors.New("tls: cert and key go together")
	}
	if c.Cert != "" {
		pair, err := tls.LoadX509KeyPair(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("tls cert: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// Unmarshal parses a tls block at the dispenser's "tls" token:
//
//	tls {
//		ca <pem_file>
//		server_name <name>
//		cert <pem_file>
//		key <pem_file>
//		insecure_skip_verify
//	}
func Unmarshal(d *caddyfile.Dispenser) (*Config, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	c := &Config{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch sub := d.Val(); sub {
		case "ca":
			err = cfutil.OneArg(d, &c.CA)
		case "server_name":
			err = cfutil.OneArg(d, &c.ServerName)
		case "cert":
			err = cfutil.OneArg(d, &c.Cert)
		case "key":
			err = cfutil.OneArg(d, &c.Key)
		case "insecure_skip_verify":
			if d.NextArg() {
				return nil, d.ArgErr()
			}
			c.InsecureSkipVerify = true
		default:
			return nil, d.Errf("tls: unknown option %q", sub)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}
