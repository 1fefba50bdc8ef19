package bench

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
	_ "github.com/caddyprelude/prelude/modules/l4git"
)

// bigRepoFiles of random (incompressible) content make the pack at least
// 50 MB.
const (
	bigRepoFiles    = 56
	bigRepoFileSize = 1 << 20
)

var (
	bigRepoOnce sync.Once
	bigRepoBase string
	bigRepoErr  error
)

// bigRepo builds, once per process, a bare repository big.git whose pack
// is over 50 MB, and returns the directory that holds it.
func bigRepo(b *testing.B) string {
	bigRepoOnce.Do(func() {
		bigRepoBase, bigRepoErr = os.MkdirTemp("", "prelude-bench-git-")
		if bigRepoErr != nil {
			return
		}
		work := filepath.Join(bigRepoBase, "work")
		buf := make([]byte, bigRepoFileSize)
		if bigRepoErr = os.MkdirAll(work, 0o755); bigRepoErr != nil {
			return
		}
		for i := 0; i < bigRepoFiles; i++ {
			_, _ = rand.Read(buf)
			if bigRepoErr = os.WriteFile(filepath.Join(work, "blob"+strconv.Itoa(i)), buf, 0o644); bigRepoErr != nil {
				return
			}
		}
		for _, args := range [][]string{{"init", "-q", "-b", "main"}, {"add", "."},
			{"-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "big"},
			{"clone", "-q", "--bare", work, filepath.Join(bigRepoBase, "big.git")}} {
			cmd := exec.Command("git", args...)
			cmd.Dir = work
			if out, err := cmd.CombinedOutput(); err != nil {
				bigRepoErr = &exec.Error{Name: "git " + args[0] + ": " + string(out), Err: err}
				return
			}
		}
		_ = os.RemoveAll(work)
	})
	if bigRepoErr != nil {
		b.Fatal(bigRepoErr)
	}
	return bigRepoBase
}

// BenchmarkGitClone times `git clone --bare` of a repository over 50 MB
// from git daemon on each path, one after the other in every iteration,
// and reports the median per path and the ratios to direct.
func BenchmarkGitClone(b *testing.B) {
	e2e.RequireGit(b)
	base := bigRepo(b)
	d := e2e.StartGitDaemon(b, base)
	prelude, l4proxy := e2e.FreePort(b), e2e.FreePort(b)
	cfg := map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"prelude": map[string]any{"listen": []string{prelude}, "routes": []any{map[string]any{
			"match":  []any{map[string]any{"git": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "git", "to": []string{d.Addr}}},
		}}},
		"l4proxy": map[string]any{"listen": []string{l4proxy}, "routes": []any{map[string]any{
			"handle": []any{map[string]any{"handler": "proxy",
				"upstreams": []any{map[string]any{"dial": []string{d.Addr}}}}},
		}}},
	}}}}
	startBenchCaddy(b, cfg)
	p := paths{direct: d.Addr, prelude: prelude, l4proxy: l4proxy}
	samples := map[string][]time.Duration{}
	dst := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, path := range p.each() {
			target := filepath.Join(dst, path[0]+strconv.Itoa(i))
			start := time.Now()
			out, errOut, err := e2e.Git(b, dst, "clone", "-q", "--bare", "git://"+path[1]+"/big.git", target)
			samples[path[0]] = append(samples[path[0]], time.Since(start))
			if err != nil {
				b.Fatalf("%s: %v\n%s%s", path[0], err, out, errOut)
			}
			b.StopTimer()
			_ = os.RemoveAll(target)
			b.StartTimer()
		}
	}
	b.StopTimer()
	med := map[string]float64{}
	for name, s := range samples {
		med[name] = ms(quantile(s, 0.5))
		b.ReportMetric(med[name], name+"-median-ms")
	}
	b.ReportMetric(med["prelude"]/med["direct"], "prelude/direct")
	b.ReportMetric(med["l4proxy"]/med["direct"], "l4proxy/direct")
}
