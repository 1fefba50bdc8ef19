package e2e

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// TestCA is a certificate authority made for one test, with a server
// certificate for 127.0.0.1 and "broker.test".
type TestCA struct {
	CAFile string // PEM of the CA certificate
	Pool   *x509.CertPool
	Server tls.Certificate
	// PEM files of the server certificate and its key.
	ServerCertFile, ServerKeyFile string

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewTestCA creates a CA and a server certificate it signed.
func NewTestCA(t testing.TB) *TestCA {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "prelude test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"broker.test"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca := &TestCA{CAFile: filepath.Join(t.TempDir(), "ca.pem"), Pool: x509.NewCertPool(), cert: caCert, key: caKey}
	ca.Pool.AddCert(caCert)
	if err := os.WriteFile(ca.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	ca.Server = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	ca.ServerCertFile, ca.ServerKeyFile = writeCertAndKey(t, filepath.Dir(ca.CAFile), "server", srvDER, srvKey)
	return ca
}

// writeCertAndKey writes a certificate and its key as PEM files
// <dir>/<name>.pem and <dir>/<name>.key.
func writeCertAndKey(t testing.TB, dir, name string, certDER []byte, key *ecdsa.PrivateKey) (certFile, keyFile string) {
	t.Helper()
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// ClientCert issues a client certificate signed by the CA and returns the
// PEM files of the certificate and its key.
func (ca *TestCA) ClientCert(t testing.TB) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "prelude proxy"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return writeCertAndKey(t, t.TempDir(), "client", der, key)
}

// StartMutualTLSRelay is StartTLSRelay requiring a client certificate
// signed by ca, as a broker configured with fail_if_no_peer_cert does.
func StartMutualTLSRelay(t testing.TB, ca *TestCA, target string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Server},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool})
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, ln, func(c net.Conn) { Forward(c, target) })
}

// StartTLSRelay terminates TLS with ca's server certificate on a free
// loopback port and forwards the plaintext to target: a TLS listener in
// front of RabbitMQ, as a broker's amqps port would be.
func StartTLSRelay(t testing.TB, ca *TestCA, target string) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{ca.Server}})
	if err != nil {
		t.Fatal(err)
	}
	return Serve(t, ln, func(c net.Conn) { Forward(c, target) })
}

// ProxyProtocolRelay stands for a broker with the PROXY protocol enabled:
// it requires a PROXY header (v1 or v2) on every connection, records it,
// and relays the rest to the target.
type ProxyProtocolRelay struct {
	Addr    string
	mu      sync.Mutex
	headers []*proxyproto.Header
}

// StartProxyProtocolRelay starts one on a free loopback port.
func StartProxyProtocolRelay(t testing.TB, target string) *ProxyProtocolRelay {
	t.Helper()
	r := &ProxyProtocolRelay{}
	r.Addr = ServeTCP(t, func(c net.Conn) { r.serve(c, target) })
	return r
}

func (r *ProxyProtocolRelay) serve(c net.Conn, target string) {
	br := bufio.NewReader(c)
	h, err := proxyproto.Read(br)
	if err != nil {
		return // no header: refuse, as a PROXY-enabled broker does
	}
	r.mu.Lock()
	r.headers = append(r.headers, h)
	r.mu.Unlock()
	Forward(struct {
		io.Reader
		io.Writer
	}{br, c}, target)
}

// Headers returns the PROXY headers received so far.
func (r *ProxyProtocolRelay) Headers() []*proxyproto.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*proxyproto.Header(nil), r.headers...)
}
