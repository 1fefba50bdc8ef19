package bench

import (
	"bufio"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyprelude/prelude/internal/e2e"
)

const pyPeer = "../modules/l4zmtp/testdata/peer.py"

// BenchmarkZMTPCurveLibzmq measures CURVE throughput with libzmq on both
// ends (python3-zmq): 2000 pipelined 64 KiB messages echoed by a CURVE
// ROUTER, per path, one after the other in every iteration. The peers'
// encryption dominates; what it shows is what each proxy costs on top.
// It also reports the CPU time each path takes per GB relayed, in all and
// per process (client, worker, Caddy): where direct already keeps both CPUs busy, the
// throughput a path can reach is bounded by direct's CPU over its own.
// With PRELUDE_BENCH_HAPROXY set, HAProxy in TCP mode is a fourth path.
func BenchmarkZMTPCurveLibzmq(b *testing.B) {
	if err := exec.Command("/usr/bin/python3", "-c", "import zmq").Run(); err != nil {
		b.Fatalf("python3-zmq is required (make bench installs it): %v", err)
	}
	keys, err := exec.Command("/usr/bin/python3", pyPeer, "keypair").Output()
	if err != nil {
		b.Fatal(err)
	}
	pub, sec := strings.Fields(string(keys))[0], strings.Fields(string(keys))[1]
	worker := e2e.FreePort(b)
	cmd := exec.Command("/usr/bin/python3", pyPeer, "worker", worker, "CURVE", sec, pub)
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if line, _ := bufio.NewReader(out).ReadString('\n'); strings.TrimSpace(line) != "ready" {
		b.Fatalf("worker: %q", line)
	}
	prelude, l4proxy := e2e.FreePort(b), e2e.FreePort(b)
	caddy := startBenchCaddy(b, map[string]any{"apps": map[string]any{"layer4": map[string]any{"servers": map[string]any{
		"prelude": map[string]any{"listen": []string{prelude}, "routes": []any{map[string]any{
			"match":  []any{map[string]any{"zmtp": map[string]any{}}},
			"handle": []any{map[string]any{"handler": "zmtp", "to": []string{worker}}},
		}}},
		"l4proxy": map[string]any{"listen": []string{l4proxy}, "routes": []any{map[string]any{
			"handle": []any{map[string]any{"handler": "proxy",
				"upstreams": []any{map[string]any{"dial": []string{worker}}}}},
		}}},
	}}}})
	three := (paths{direct: worker, prelude: prelude, l4proxy: l4proxy}).each()
	each := three[:]
	hp := startHAProxy(b, worker)
	if hp != nil {
		each = append(each, [2]string{"haproxy", hp.Addr})
	}
	const n, size = 2000, 64 << 10
	secs := map[string]float64{}
	cpu := map[string]map[string]time.Duration{"client": {}, "worker": {}, "caddy": {}, "proxy": {}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, path := range each {
			caddy0, worker0, hp0 := caddy.CPUTime(), e2e.ProcessCPU(cmd.Process.Pid), hp.CPUTime()
			client := exec.Command("/usr/bin/python3", pyPeer, "throughput", path[1], "CURVE",
				strconv.Itoa(n), strconv.Itoa(size), pub)
			out, err := client.Output()
			if err != nil {
				b.Fatalf("%s: %v %s", path[0], err, out)
			}
			cpu["client"][path[0]] += client.ProcessState.UserTime() + client.ProcessState.SystemTime()
			cpu["worker"][path[0]] += e2e.ProcessCPU(cmd.Process.Pid) - worker0
			cpu["caddy"][path[0]] += caddy.CPUTime() - caddy0
			if hp != nil && path[0] == "haproxy" {
				cpu["proxy"][path[0]] += hp.CPUTime() - hp0
			}
			s, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
			if err != nil {
				b.Fatalf("%s: %q", path[0], out)
			}
			secs[path[0]] += s
		}
	}
	b.StopTimer()
	mbps := map[string]float64{}
	for name, s := range secs {
		mbps[name] = float64(b.N) * 2 * n * size / s / 1e6
		b.ReportMetric(mbps[name], name+"-MB/s")
	}
	b.ReportMetric(mbps["prelude"]/mbps["direct"], "prelude/direct")
	b.ReportMetric(mbps["l4proxy"]/mbps["direct"], "l4proxy/direct")
	if hp != nil {
		b.ReportMetric(mbps["haproxy"]/mbps["direct"], "haproxy/direct")
	}
	gb := float64(b.N) * 2 * n * size / 1e9
	all := map[string]time.Duration{}
	for part, byPath := range cpu {
		for name, t := range byPath {
			all[name] += t
			idle := part == "caddy" && (name == "direct" || name == "haproxy") // an in-process Caddy idles there
			if !idle {
				b.ReportMetric(t.Seconds()/gb, name+"-"+part+"-cpu-s/GB")
			}
		}
	}
	for name, t := range all {
		b.ReportMetric(t.Seconds()/gb, name+"-cpu-s/GB")
	}
	b.ReportMetric(float64(all["direct"])/float64(all["prelude"]), "prelude-cpu-bound")
}
