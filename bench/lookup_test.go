package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

// lookupTableKeys is the size of the routing table BenchmarkGitLookup
// routes through: the million keys.
const lookupTableKeys = 1_000_000

// BenchmarkGitLookup compares a git route from a lookup table of a million
// keys with a static route to the same daemon, alternating in every
// iteration: a clone of big.git (bulk) and ls-remote (connection setup,
// where the lookup's cost would show), medians and ratios lookup/static.
func BenchmarkGitLookup(b *testing.B) {
	e2e.RequireGit(b)
	base := bigRepo(b)
	d := e2e.StartGitDaemon(b, base)
	table := filepath.Join(b.TempDir(), "routes.tsv")
	writeLookupTable(b, table, "/big.git", d.Addr)
	static, lookup := e2e.FreePort(b), e2e.FreePort(b)
	server := func(listen string, h map[string]any) map[string]any {
		return map[string]any{"listen": []string{listen}, "routes": []any{map[string]any{
			"match": []any{map[string]any{"git": map[string]any{}}}, "handle": []any{h}}}}
	}
	startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"static": server(static, map[string]any{"handler": "git", "to": []string{d.Addr}}),
		"lookup": server(lookup, map[string]any{"handler": "git",
			"lookup": map[string]any{"source": "file", "path": table, "key": "{l4.git.repo}"}}),
	}}}})
	paths := [][2]string{{"static", static}, {"lookup", lookup}}
	clone, ls := map[string][]time.Duration{}, map[string][]time.Duration{}
	dst := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, p := range paths {
			target := filepath.Join(dst, fmt.Sprint(p[0], i))
			start := time.Now()
			if _, errOut, err := e2e.Git(b, dst, "clone", "-q", "--bare", "git://"+p[1]+"/big.git", target); err != nil {
				b.Fatalf("%s clone: %v %s", p[0], err, errOut)
			}
			clone[p[0]] = append(clone[p[0]], time.Since(start))
			b.StopTimer()
			_ = os.RemoveAll(target)
			b.StartTimer()
			start = time.Now()
			for range 10 {
				if _, errOut, err := e2e.Git(b, dst, "ls-remote", "git://"+p[1]+"/big.git", "HEAD"); err != nil {
					b.Fatalf("%s ls-remote: %v %s", p[0], err, errOut)
				}
			}
			ls[p[0]] = append(ls[p[0]], time.Since(start)/10)
		}
	}
	b.StopTimer()
	for _, p := range paths {
		b.ReportMetric(ms(quantile(clone[p[0]], 0.5)), p[0]+"-clone-ms")
		b.ReportMetric(ms(quantile(ls[p[0]], 0.5)), p[0]+"-ls-remote-ms")
	}
	b.ReportMetric(ms(quantile(clone["lookup"], 0.5))/ms(quantile(clone["static"], 0.5)), "clone-lookup/static")
	b.ReportMetric(ms(quantile(ls["lookup"], 0.5))/ms(quantile(ls["static"], 0.5)), "ls-remote-lookup/static")
}

// writeLookupTable writes lookupTableKeys keys, one of them key → addr.
func writeLookupTable(b *testing.B, path, key, addr string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	w := bufio.NewWriter(f)
	for i := range lookupTableKeys - 1 {
		fmt.Fprintf(w, "/owner%07d/repo.git\t10.%d.%d.%d:9418\n", i, i>>16&255, i>>8&255, i&255)
	}
	fmt.Fprintf(w, "%s\t%s\n", key, addr)
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
}
