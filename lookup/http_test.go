package lookup

import (
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// startService serves handler over real HTTP on loopback.
func startService(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestHTTPSource(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	addr := startService(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RawPath+r.URL.Path+"?"+r.URL.RawQuery)
		mu.Unlock()
		user, pass, _ := r.BasicAuth()
		key := strings.TrimPrefix(r.URL.Path, "/route/")
		if q := r.URL.Query().Get("k"); q != "" {
			key = q
		}
		switch {
		case user != "caddy" || pass != "s3cret":
			w.WriteHeader(http.StatusUnauthorized)
		case key == "alice":
			w.Write([]byte(`{"to": ["127.0.0.1:9418"]}`))
		case key == "a/b c&d":
			w.Write([]byte(`127.0.0.2:9418`))
		case key == "mallory":
			w.Write([]byte(`{"refuse": "account suspended"}`))
		case key == "garbage":
			w.Write([]byte(`<html>`))
		case key == "huge":
			w.Write([]byte(strings.Repeat("x", MaxAnswerLen+10)))
		case key == "broken":
			w.WriteHeader(http.StatusInternalServerError)
		case key == "moved":
			http.Redirect(w, r, "/route/alice", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	})
	for _, tmpl := range []string{"http://caddy:s3cret@" + addr + "/route/{key}", "http://caddy:s3cret@" + addr + "/q?k={key}"} {
		h, err := NewHTTP(tmpl, &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(h.String(), "s3cret") {
			t.Fatalf("String() shows the password: %s", h)
		}
		ctx := context.Background()
		if a, ok, err := h.Fetch(ctx, "alice"); err != nil || !ok || a.Addrs[0] != "127.0.0.1:9418" {
			t.Errorf("%s alice: %v %v %v", tmpl, a, ok, err)
		}
		if a, ok, err := h.Fetch(ctx, "a/b c&d"); err != nil || !ok || a.Addrs[0] != "127.0.0.2:9418" {
			t.Errorf("%s escaped key: %v %v %v", tmpl, a, ok, err)
		}
		if a, ok, err := h.Fetch(ctx, "mallory"); err != nil || !ok || a.Refuse != "account suspended" {
			t.Errorf("%s refusal: %v %v %v", tmpl, a, ok, err)
		}
		if _, ok, err := h.Fetch(ctx, "nobody"); err != nil || ok {
			t.Errorf("%s 404: %v %v", tmpl, ok, err)
		}
		for key, want := range map[string]string{"garbage": "not host:port", "huge": "longer than", "broken": "500", "moved": "302"} {
			if _, _, err := h.Fetch(ctx, key); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "s3cret") {
				t.Errorf("%s %s: %v, want an error with %q", tmpl, key, err, want)
			}
		}
	}
	for _, bad := range []string{"ftp://x/{key}", "http:///{key}", "http://x/route", "http://x/%zz{key}"} {
		if _, err := NewHTTP(bad, http.DefaultClient); err == nil {
			t.Errorf("NewHTTP(%q) accepted", bad)
		}
	}
}

func TestHTTPSourceDownAndSlow(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	h, _ := NewHTTP("http://"+dead+"/{key}", http.DefaultClient)
	if _, _, err := h.Fetch(context.Background(), "alice"); err == nil || strings.Contains(err.Error(), "/alice") {
		t.Fatalf("service down: %v (want an error without the URL)", err)
	}
	slow := startService(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	h, _ = NewHTTP("http://"+slow+"/{key}", http.DefaultClient)
	c, _ := NewCache(CacheConfig{TTL: time.Second, Timeout: 100 * time.Millisecond, MaxEntries: 10}, h.Fetch)
	start := time.Now()
	_, _, r, err := c.Get(context.Background(), "alice")
	if err == nil || r != Failed || time.Since(start) > time.Second || !strings.Contains(err.Error(), "within 100ms") {
		t.Fatalf("slow service: %v %v after %v", r, err, time.Since(start))
	}
}
