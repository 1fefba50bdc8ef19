package lookup

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

const sample = "# git routes\n" +
	"alice\t10.0.0.1:9418\n" +
	"\n" +
	"bob\tgit-b.internal:9418,git-c.internal:9418\r\n" +
	"carol\t[::1]:9418\n"

func TestParseTSV(t *testing.T) {
	tb, err := ParseTSV(strings.NewReader(sample))
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string][]string{
		"alice": {"10.0.0.1:9418"},
		"bob":   {"git-b.internal:9418", "git-c.internal:9418"},
		"carol": {"[::1]:9418"},
	} {
		if got, ok := tb.Lookup(key); !ok || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %v %v, want %v", key, got, ok, want)
		}
	}
	if tb.Len() != 3 {
		t.Errorf("Len %d, want 3", tb.Len())
	}
	for _, miss := range []string{"dave", "", "# git routes", strings.Repeat("a", MaxKeyLen+1)} {
		if got, ok := tb.Lookup(miss); ok {
			t.Errorf("%.20q: found %v", miss, got)
		}
	}
}

// TestTableFarmAnswer: a value "farm:<name>" names a farm; addresses
// stay addresses.
func TestTableFarmAnswer(t *testing.T) {
	tb, err := ParseTSV(strings.NewReader("alice\tfarm:blue\nbob\t10.0.0.1:9418,10.0.0.2:9418\n"))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := tb.Lookup("alice")
	if got := TableAnswer(a); got.Farm != "blue" || got.Addrs != nil {
		t.Errorf("alice: %+v, want farm blue", got)
	}
	b, _ := tb.Lookup("bob")
	if got := TableAnswer(b); got.Farm != "" || len(got.Addrs) != 2 {
		t.Errorf("bob: %+v, want two addresses", got)
	}
}

func TestParseTSVRefuses(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"alice 10.0.0.1:9418\n", "line 1: no tab"},
		{"ok\t1.2.3.4:1\n\t1.2.3.4:1\n", "line 2: empty key"},
		{"al ice\t1.2.3.4:1\n", "white space"},
		{"alice\t\n", "no address"},
		{"alice\t10.0.0.1\n", "not host:port"},
		{"alice\t10.0.0.1:0\n", "no valid port"},
		{"alice\t10.0.0.1:70000\n", "no valid port"},
		{"alice\t10.0.0.1:git\n", "no valid port"},
		{"alice\t:9418\n", "no valid host"},
		{"alice\ta/b:9418\n", "no valid host"},
		{"alice\t1.2.3.4:1,\n", "not host:port"},
		{"alice\t1.2.3.4:1\nalice\t1.2.3.4:2\n", "listed twice"},
		{"alice\tfarm:\n", "farm name"},
		{"alice\tfarm:a,1.2.3.4:1\n", "holds"},
		{"alice\t1.2.3.4:1,farm:a\n", "no valid port"},
		{strings.Repeat("k", MaxKeyLen+1) + "\t1.2.3.4:1\n", "key longer than"},
		{"alice\t" + strings.Repeat("1.2.3.4:1,", 8000) + "1.2.3.4:1\n", "longer than"},
	} {
		_, err := ParseTSV(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%.40q: %v, want an error with %q", c.in, err, c.want)
		}
	}
}

// TestParseTSVPrefixes: every prefix of a table that ends a line parses
// to a subset of it. (A prefix cut inside a line can still be a valid,
// different line: File refuses a last line without its newline for that.)
func TestParseTSVPrefixes(t *testing.T) {
	full, _ := ParseTSV(strings.NewReader(sample))
	for i := 0; i <= len(sample); i++ {
		tb, err := ParseTSV(strings.NewReader(sample[:i]))
		if err != nil || !strings.HasSuffix(sample[:i], "\n") {
			continue
		}
		for key := range tableKeys(tb) {
			want, _ := full.Lookup(key)
			if got, _ := tb.Lookup(key); !reflect.DeepEqual(got, want) {
				t.Fatalf("prefix %d holds %q → %v, the table %v", i, key, got, want)
			}
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatalf("not within 1s: %s", what)
}

// TestFileReloads: a replaced file is read again within a second; a bad
// or incomplete one keeps the last good table and says why.
func TestFileReloads(t *testing.T) { bothBuilds(t, testFileReloads) }

func testFileReloads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.tsv")
	writeFile(t, path, "alice\t10.0.0.1:9418\n")
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	loads := make(chan error, 16)
	f.Loaded = func(_ *Table, _ time.Duration, err error) { loads <- err }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Watch(ctx, 50*time.Millisecond)
	lookup := func(key string) string {
		a, _ := f.Lookup(key)
		return strings.Join(a, ",")
	}

	writeFile(t, path, "alice\t10.0.0.2:9418\n")
	waitFor(t, "the moved route", func() bool { return lookup("alice") == "10.0.0.2:9418" })
	if err := <-loads; err != nil || f.Err() != nil {
		t.Fatalf("good reload: %v, %v", err, f.Err())
	}

	writeFile(t, path, "alice 10.0.0.3:9418\n")
	waitFor(t, "the bad file noticed", func() bool { return f.Err() != nil })
	if lookup("alice") != "10.0.0.2:9418" || !strings.Contains(f.Err().Error(), "line 1") {
		t.Fatalf("after a bad file: %q, %v", lookup("alice"), f.Err())
	}

	writeFile(t, path, "alice\t10.0.0.4:9418\nbob\t10.0.0.5:94") // cut mid-line
	waitFor(t, "the incomplete file noticed", func() bool {
		return f.Err() != nil && strings.Contains(f.Err().Error(), "no newline")
	})
	if lookup("alice") != "10.0.0.2:9418" {
		t.Fatalf("after an incomplete file: %q", lookup("alice"))
	}

	_ = os.Remove(path)
	waitFor(t, "the missing file noticed", func() bool { return os.IsNotExist(f.Err()) })
	writeFile(t, path, "alice\t10.0.0.6:9418\n")
	waitFor(t, "the file back", func() bool { return lookup("alice") == "10.0.0.6:9418" && f.Err() == nil })
}

func TestOpenFileFailsOnABadFirstRead(t *testing.T) { bothBuilds(t, testOpenFileFailsOnABadFirstRead) }

func testOpenFileFailsOnABadFirstRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.tsv")
	if _, err := OpenFile(path); !os.IsNotExist(err) {
		t.Fatalf("missing file: %v", err)
	}
	writeFile(t, path, "alice\n")
	if _, err := OpenFile(path); err == nil || !strings.Contains(err.Error(), "routes.tsv: line 1") {
		t.Fatalf("bad file: %v", err)
	}
}

// FuzzParseTSV: any input parses or fails cleanly, and what parses holds
// only checked keys and addresses.
func FuzzParseTSV(f *testing.F) {
	f.Add([]byte(sample))
	f.Fuzz(func(t *testing.T, b []byte) {
		tb, err := ParseTSV(bytes.NewReader(b))
		if err != nil {
			return
		}
		for key := range tableKeys(tb) {
			if key == "" || len(key) > MaxKeyLen || strings.ContainsAny(key, " \t") {
				t.Fatalf("key %q was accepted", key)
			}
			addrs, ok := tb.Lookup(key)
			if !ok || len(addrs) == 0 {
				t.Fatalf("key %q has no addresses", key)
			}
			if ans := TableAnswer(addrs); ans.Farm != "" {
				if err := CheckFarmName(ans.Farm); err != nil {
					t.Fatalf("key %q: %v", key, err)
				}
				continue
			}
			for _, a := range addrs {
				if err := CheckAddress(a); err != nil {
					t.Fatalf("key %q: %v", key, err)
				}
			}
		}
	})
}

// millionKeys is a table of n short keys, one address each.
func millionKeys(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		fmt.Fprintf(&b, "owner%07d\t10.%d.%d.%d:9418\n", i, i>>16&255, i>>8&255, i&255)
	}
	return b.Bytes()
}

// BenchmarkLoad1M: parsing a table of a million keys, and the heap the
// table keeps (MB) once loaded.
func BenchmarkLoad1M(b *testing.B) {
	data := millionKeys(1_000_000)
	var keep *Table
	var before, after runtime.MemStats
	b.ResetTimer()
	for range b.N {
		keep = nil
		runtime.GC()
		runtime.ReadMemStats(&before)
		tb, err := ParseTSV(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		keep = tb
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / (1 << 20)
	b.ReportMetric(heap, "heap-MB") // the arena: ParseTSV reads it into the heap (File does not)
	b.ReportMetric(float64(len(keep.idx.mem))/(1<<20), "index-MB")
	runtime.KeepAlive(keep)
}

// BenchmarkLookup1M: one lookup in a table of a million keys.
func BenchmarkLookup1M(b *testing.B) {
	tb, err := ParseTSV(bytes.NewReader(millionKeys(1_000_000)))
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprintf("owner%07d", i*977)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, ok := tb.Lookup(keys[i&1023]); !ok {
			b.Fatal("miss")
		}
	}
}

// lookupLatencies times n lookups of random keys in tb, one by one.
func lookupLatencies(tb *Table, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		key := fmt.Sprintf("owner%07d", (i*7919)%1_000_000)
		start := time.Now()
		if _, ok := tb.Lookup(key); !ok {
			panic("miss: " + key)
		}
		out[i] = time.Since(start)
	}
	return out
}

func percentile(d []time.Duration, q float64) float64 {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return float64(s[int(q*float64(len(s)-1))]) / float64(time.Microsecond)
}

// BenchmarkLookupLatency1M: the p99 and the worst of single lookups in a
// table of a million keys, alone and while the whole table is parsed again
// and again beside them (a reload: its allocation and garbage collection
// are what could stall a connection setup).
func BenchmarkLookupLatency1M(b *testing.B) {
	data := millionKeys(1_000_000)
	tb, err := ParseTSV(bytes.NewReader(data))
	if err != nil {
		b.Fatal(err)
	}
	var quiet, reloading []time.Duration
	b.ResetTimer()
	for range b.N {
		quiet = append(quiet, lookupLatencies(tb, 200_000)...)
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := ParseTSVBytes(append([]byte(nil), data...)); err != nil {
					panic(err)
				}
			}
		}()
		reloading = append(reloading, lookupLatencies(tb, 200_000)...)
		close(stop)
		<-done
	}
	b.ReportMetric(percentile(quiet, 0.99), "p99-us")
	b.ReportMetric(percentile(quiet, 1), "max-us")
	b.ReportMetric(percentile(quiet, 0.999), "p99.9-us")
	b.ReportMetric(percentile(reloading, 0.99), "reloading-p99-us")
	b.ReportMetric(percentile(reloading, 0.999), "reloading-p99.9-us")
	b.ReportMetric(percentile(reloading, 1), "reloading-max-us")
}

// tableKeys is every key of tb.
func tableKeys(tb *Table) map[string]bool {
	keys := map[string]bool{}
	for _, sl := range tb.idx.slots {
		if sl.r.klen != 0 {
			keys[string(tb.key(sl.r))] = true
		}
	}
	return keys
}

// TestIndexCollisions: keys whose hashes are equal, or whose home slots
// are taken, are all found, past the end of the slots too; a key listed
// twice is refused; a missing key ends at an empty slot.
func TestIndexCollisions(t *testing.T) {
	arena := []byte("alice\t10.0.0.1:1\nbob\t10.0.0.2:2\ncarol\t10.0.0.3:3\n")
	idx, err := newIndex(3)
	if err != nil {
		t.Fatal(err)
	}
	defer idx.free()
	tb := &Table{arena: arena, idx: idx}
	rows := []row{{0, 5, 10}, {17, 3, 10}, {32, 5, 10}}
	last := ^uint64(0) // the last slot: probing wraps around
	for _, r := range rows {
		if idx.insert(tb, last, r) {
			t.Fatalf("%s refused", tb.key(r))
		}
	}
	for i, key := range []string{"alice", "bob", "carol"} {
		if r, ok := idx.find(tb, last, key); !ok || r != rows[i] {
			t.Errorf("%s: %v %v", key, r, ok)
		}
	}
	if _, ok := idx.find(tb, last, "dave"); ok {
		t.Error("dave found")
	}
	if !idx.insert(tb, last, rows[1]) {
		t.Error("bob inserted twice")
	}
	if idx.n != 3 || len(tableKeys(tb)) != 3 {
		t.Fatalf("n %d, keys %v", idx.n, tableKeys(tb))
	}
}

// TestFileArenasFreed: tables replaced by reloads are unmapped once the
// lookups under way in them are done, while lookups go on (a lookup into
// an unmapped table would crash the test).
func TestFileArenasFreed(t *testing.T) {
	bothBuilds(t, testFileArenasFreed)
}

// bothBuilds runs test with tables built in child processes (where the
// OS has them; here every table, however small, and a child given up
// after 300 ms, as on a busy machine) and in the test's own process.
func bothBuilds(t *testing.T, test func(t *testing.T)) {
	t.Run("child", func(t *testing.T) {
		childMinSize.Store(0)
		childLimit.Store(int64(300 * time.Millisecond))
		defer childMinSize.Store(defaultChildMinSize)
		defer childLimit.Store(int64(defaultChildLimit))
		test(t)
	})
	t.Run("here", func(t *testing.T) {
		was := childBuilds.Load()
		childBuilds.Store(false)
		defer childBuilds.Store(was)
		test(t)
	})
}

func testFileArenasFreed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.tsv")
	writeFile(t, path, "alice\t10.0.0.1:1\n")
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if addrs, ok := f.Lookup("alice"); !ok || !strings.HasPrefix(addrs[0], "10.0.0.") {
				panic(fmt.Sprint("lookup: ", addrs, ok))
			}
		}
	}()
	var replaced []*Table
	for i := range 40 {
		replaced = append(replaced, f.Table())
		writeFile(t, path, fmt.Sprintf("alice\t10.0.0.%d:1\n%s", i%250+1, strings.Repeat("#pad\n", i)))
		if err := f.reload(); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			runtime.GC()
		}
	}
	close(stop)
	<-done
	// Every replaced table is unmapped without waiting for the collector
	// (they are all still reachable here, through replaced).
	waitFor(t, "every replaced table unmapped", func() bool {
		for _, old := range replaced {
			if !old.mem.released.Load() {
				return false
			}
		}
		return true
	})
	if f.Table().mem.released.Load() {
		t.Fatal("the current table was unmapped")
	}
}

const sampleJSON = `{"alice": "10.0.0.1:9418", "bob": ["git-b.internal:9418", "git-c.internal:9418"], "carol": "[::1]:9418"}`

func TestJSONToTSV(t *testing.T) {
	tsv, err := JSONToTSV([]byte(sampleJSON + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	tb, err := ParseTSVBytes(tsv)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := tb.Lookup("bob"); !ok || !reflect.DeepEqual(got, []string{"git-b.internal:9418", "git-c.internal:9418"}) {
		t.Fatalf("bob: %v %v", got, ok)
	}
	for in, want := range map[string]string{
		`[]`:                         "not a JSON object",
		`{"a b": "1.2.3.4:1"}`:       "white space",
		`{"a": 5}`:                   "must be an address string",
		`{"a": [5]}`:                 "must be strings",
		`{"a": "1.2.3.4:1\t"}`:       "white space",
		`{"a": "1.2.3.4:1"} {}`:      "after the JSON object",
		`{"a": "1.2.3.4:1", "a": 1}`: "must be an address string",
	} {
		if _, err := JSONToTSV([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
	// Every prefix of the sample: an error, never a panic or a table.
	for i := range len(sampleJSON) {
		if _, err := JSONToTSV([]byte(sampleJSON[:i])); err == nil {
			t.Errorf("prefix %q was taken", sampleJSON[:i])
		}
	}
}

// TestFileJSON: a .json path is read as a JSON map, and a replaced map
// is used within a second.
func TestFileJSON(t *testing.T) { bothBuilds(t, testFileJSON) }

func testFileJSON(t *testing.T) {
	path := filepath.Join(t.TempDir(), "routes.json")
	writeFile(t, path, sampleJSON)
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.Watch(ctx, 50*time.Millisecond)
	if got, ok := f.Lookup("alice"); !ok || got[0] != "10.0.0.1:9418" {
		t.Fatalf("alice: %v %v", got, ok)
	}
	writeFile(t, path, `{"alice": "10.0.0.7:9418"}`)
	waitFor(t, "the new map", func() bool { got, _ := f.Lookup("alice"); return len(got) == 1 && got[0] == "10.0.0.7:9418" })
	writeFile(t, path, `{"alice": "10.0.0.8:9418"`) // truncated: the last good map stays
	waitFor(t, "the truncated map noticed", func() bool { return f.Err() != nil })
	if got, _ := f.Lookup("alice"); got[0] != "10.0.0.7:9418" {
		t.Fatalf("after a truncated map: %v, error %v", got, f.Err())
	}
}

func FuzzJSONToTSV(f *testing.F) {
	f.Add([]byte(sampleJSON))
	f.Fuzz(func(t *testing.T, b []byte) {
		tsv, err := JSONToTSV(b)
		if err != nil {
			return
		}
		if _, err := ParseTSVBytes(tsv); err != nil && !strings.Contains(err.Error(), "address") && !strings.Contains(err.Error(), "listed twice") && !strings.Contains(err.Error(), "longer than") {
			t.Fatalf("%q: converted to a TSV that fails for another reason: %v", b, err)
		}
	})
}
