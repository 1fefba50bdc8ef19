package l4zmtp_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// TestLookupByIdentity: libzmq clients paired with the worker a lookup
// names for their identity (read from the metadata), not the one a hash
// would pick; a client whose key the table does not hold gets a ZMTP
// ERROR naming it, and no worker is dialed.
func TestLookupByIdentity(t *testing.T) {
	requirePyZMQ(t)
	r1 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "NULL"))
	r2 := e2e.StartRelay(t, "127.0.0.1:0", startWorker(t, "NULL"))
	routes := filepath.Join(t.TempDir(), "identities.tsv")
	if err := os.WriteFile(routes, []byte("client-A\t"+r1.Addr+"\nclient-B\t"+r2.Addr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr, plain := e2e.FreePort(t), e2e.FreePort(t)
	server := func(listen string, h map[string]any) map[string]any {
		return map[string]any{"listen": []string{listen}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"zmtp": map[string]any{}}}, "handle": []any{h}}}}
	}
	e2e.StartCaddy(t, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"identity": server(addr, map[string]any{"handler": "zmtp", "inspect_metadata": true,
			"lookup": map[string]any{"source": "file", "path": routes, "key": "{l4.zmtp.identity}"}}),
		// keyed by the client's address, which the table does not hold
		"address": server(plain, map[string]any{"handler": "zmtp",
			"lookup": map[string]any{"source": "file", "path": routes, "key": "{l4.conn.remote_ip}"}}),
	}}}})
	idclient := func(id string) string {
		out, _ := exec.Command(python, "testdata/peer.py", "idclient", addr, "NULL", id, "1000").Output()
		return strings.TrimSpace(string(out))
	}
	for range 2 {
		if got := idclient("client-A"); got != "ok" {
			t.Fatalf("client-A: %q", got)
		}
		if got := idclient("client-B"); got != "ok" {
			t.Fatalf("client-B: %q", got)
		}
	}
	if a, b := r1.Conns.Load(), r2.Conns.Load(); a != 2 || b != 2 {
		t.Fatalf("workers saw %d and %d pairs, want 2 each (client-A on the first, client-B on the second)", a, b)
	}

	if got, want := refusalReason(t, plain), `no route for key "127.0.0.1"`; got != want {
		t.Fatalf("refusal %q, want %q", got, want)
	}
	if a, b := r1.Conns.Load(), r2.Conns.Load(); a+b != 4 {
		t.Fatalf("a worker was dialed for the unrouted client: %d and %d", a, b)
	}
}
