package git

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

func TestCaptures(t *testing.T) {
	want := map[string]Request{
		"clone-v2":     {Service: "upload-pack", Path: "/repo.git", Host: "127.0.0.1", Extra: []string{"version=2"}, Version: 2},
		"ls-remote-v1": {Service: "upload-pack", Path: "/repo.git", Host: "127.0.0.1", Extra: []string{"version=1"}, Version: 1},
		"ls-remote-v0": {Service: "upload-pack", Path: "/repo.git", Host: "127.0.0.1"},
		"push":         {Service: "receive-pack", Path: "/alice/proj.git", Host: "127.0.0.1"},
		"archive":      {Service: "upload-archive", Path: "/repo.git", Host: "127.0.0.1", Extra: []string{"version=2"}, Version: 2},
		"ipv6":         {Service: "upload-pack", Path: "/repo.git", Host: "::1", Extra: []string{"version=2"}, Version: 2},
	}
	for name, b := range loadCaptures(t) {
		r, n, err := ParseRequest(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		w := want[name]
		if r.Service != w.Service || r.Path != w.Path || r.Host != w.Host || r.Version != w.Version ||
			!reflect.DeepEqual(r.Extra, w.Extra) || r.Port == "" {
			t.Errorf("%s: got %+v, want %+v with a port", name, *r, w)
		}
		// Re-encoding an unchanged request gives back the exact bytes.
		enc, err := r.Append(nil)
		if err != nil || !bytes.Equal(enc, b[:n]) {
			t.Errorf("%s: re-encoded %q, want %q", name, enc, b[:n])
		}
		if name == "archive" && n == len(b) {
			t.Errorf("archive: the capture should carry arguments after the request")
		}
	}
}

// TestTruncatedPrefixes: every proper prefix of a real request is "need
// more", never "malformed".
func TestTruncatedPrefixes(t *testing.T) {
	for name, b := range loadCaptures(t) {
		_, n, err := ParseRequest(b)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			if _, _, err := ParseRequest(b[:i]); !errors.Is(err, ErrNeedMore) {
				t.Fatalf("%s prefix %d/%d: %v, want ErrNeedMore", name, i, n, err)
			}
		}
	}
}

func TestOtherProtocolsAreMalformed(t *testing.T) {
	for name, b := range map[string][]byte{
		"amqp":     []byte("AMQP\x00\x00\x09\x01"),
		"http":     []byte("GET / HTTP/1.1\r\n"),
		"tls":      {0x16, 0x03, 0x01, 0x00, 0xa5, 0x01},
		"ssh":      []byte("SSH-2.0-OpenSSH_9.2p1\r\n"),
		"zmtp":     {0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 1},
		"foo":      []byte("REQ 1 hello\n"),
		"flush":    []byte("0000"),
		"too-long": []byte("fff1git-upload-pack /x"),
		"bad-svc":  []byte("0018git-upload-packs /x\x00"),
		"no-path":  []byte("0014git-upload-pack \x00"),
		"no-space": []byte("0013git-upload-pack"),
		"not-git":  []byte("0010svn /repo\x00"),
		"bad-vers": []byte("0029git-upload-pack /x\x00host=a\x00\x00version=x\x00"),
	} {
		if _, _, err := ParseRequest(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func TestHostRules(t *testing.T) {
	for in, want := range map[string][2]string{
		"Mirror.Local:9418": {"mirror.local", "9418"},
		"[::1]:19422":       {"::1", "19422"},
		"[FE80::1]":         {"fe80::1", ""},
		"example.com.":      {"example.com", ""},
		"ex/am/ple.org:1":   {"example.org", "1"},
		"::1":               {"::1", ""},
	} {
		h, p := splitHost(in)
		if h != want[0] || p != want[1] {
			t.Errorf("%q: %q %q, want %q %q", in, h, p, want[0], want[1])
		}
	}
}

func TestRewriteKeepsParams(t *testing.T) {
	b := []byte("003egit-upload-pack /repo.git\x00host=127.0.0.1:19420\x00\x00version=2\x00")
	r, _, err := ParseRequest(b)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := r.WithPath("/srv/alice/repo.git").Append(nil)
	want := "0048git-upload-pack /srv/alice/repo.git\x00host=127.0.0.1:19420\x00\x00version=2\x00"
	if string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	r2, _, err := ParseRequest(out)
	if err != nil || r2.Path != "/srv/alice/repo.git" || r2.Version != 2 {
		t.Fatalf("rewritten request reparses as %+v, %v", r2, err)
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"//alice/p.git":    "/alice/p.git",
		"/srv//alice/p":    "/srv/alice/p",
		"/a/./b":           "error",
		"/a/../b":          "error",
		"/a/..":            "error",
		"/a/.":             "error",
		"relative/p.git":   "error",
		"/a/.hidden/p.git": "/a/.hidden/p.git",
		"/a/..b/p.git":     "/a/..b/p.git",
	} {
		got, err := CleanPath(in)
		if want == "error" {
			if err == nil {
				t.Errorf("%q: accepted as %q", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestOwner(t *testing.T) {
	for p, want := range map[string]string{"/alice/proj.git": "alice", "/repo.git": "", "/a/b/c": "a"} {
		if got := (&Request{Path: p}).Owner(); got != want {
			t.Errorf("%s: %q", p, got)
		}
	}
}

func TestAppendError(t *testing.T) {
	got := string(AppendError(nil, "no such repository: /x"))
	if got != "001eERR no such repository: /x" {
		t.Fatalf("%q", got)
	}
	long := AppendError(nil, string(make([]byte, 70000)))
	if len(long) != MaxPktLen {
		t.Fatalf("long ERR is %d bytes", len(long))
	}
}

// FuzzParseRequest: no input panics; a parsed request re-encodes to the
// bytes it came from, and every prefix of those is "need more".
func FuzzParseRequest(f *testing.F) {
	for _, b := range loadCaptures(f) {
		f.Add(b)
	}
	f.Add([]byte("0000"))
	f.Add([]byte("AMQP\x00\x00\x09\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := ParseRequest(b)
		if err != nil {
			return
		}
		enc, err := r.Append(nil)
		if err != nil {
			t.Fatalf("parsed request does not encode: %v", err)
		}
		if !bytes.Equal(bytes.ToLower(enc[:4]), bytes.ToLower(b[:4])) || !bytes.Equal(enc[4:], b[4:n]) {
			t.Fatalf("re-encoded %q from %q", enc, b[:n])
		}
		for i := 0; i < n; i += 1 + n/64 {
			if _, _, err := ParseRequest(b[:i]); err != ErrNeedMore {
				t.Fatalf("prefix %d of a valid request: %v", i, err)
			}
		}
		if _, err := CleanPath(r.Path); err == nil {
			_ = r.Owner()
		}
	})
}
