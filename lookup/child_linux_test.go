package lookup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestChildTableMatchesOwnBuild: a table built by a child process answers
// every key as one built here does, misses included, for TSV and JSON,
// and an empty file is an empty table.
func TestChildTableMatchesOwnBuild(t *testing.T) {
	dir := t.TempDir()
	var b strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&b, "key-%d\t10.%d.%d.%d:%d\n", i, i>>16&255, i>>8&255, i&255, 1+i%65535)
	}
	b.WriteString("farmed\tfarm:blue\n# a comment\n\n")
	for name, text := range map[string]string{"big.tsv": b.String(), "small.json": sampleJSON, "empty.tsv": ""} {
		path := filepath.Join(dir, name)
		writeFile(t, path, text)
		child, err := loadInChild(path, time.Minute)
		if err != nil {
			t.Fatalf("%s: child: %v", name, err)
		}
		here, err := loadHere(path)
		if err != nil {
			t.Fatalf("%s: here: %v", name, err)
		}
		if child.Len() != here.Len() {
			t.Fatalf("%s: %d keys from the child, %d here", name, child.Len(), here.Len())
		}
		keys := []string{"missing", "key-10000", ""}
		for key := range tableKeys(here) {
			keys = append(keys, key)
		}
		if len(keys) != here.Len()+3 {
			t.Fatalf("%s: %d keys listed, %d in the table", name, len(keys)-3, here.Len())
		}
		for _, key := range keys {
			ca, cok := child.Lookup(key)
			ha, hok := here.Lookup(key)
			if cok != hok || strings.Join(ca, ",") != strings.Join(ha, ",") {
				t.Fatalf("%s: %q: child %v %v, here %v %v", name, key, ca, cok, ha, hok)
			}
		}
		child.mem.release()
		here.mem.release()
	}
}

// TestChildErrorsAreTheParseErrors: a table the child cannot parse gives
// the same error as a build here, naming the file and the line.
func TestChildErrorsAreTheParseErrors(t *testing.T) {
	dir := t.TempDir()
	for name, text := range map[string]string{"a.tsv": "ok\t1.2.3.4:1\nbad line\n", "b.tsv": "cut\t1.2.3.4:1", "c.json": `{"a": 1}`} {
		path := filepath.Join(dir, name)
		writeFile(t, path, text)
		_, cerr := loadInChild(path, time.Minute)
		_, herr := loadHere(path)
		if cerr == nil || herr == nil || cerr.Error() != herr.Error() {
			t.Errorf("%s: child %v, here %v", name, cerr, herr)
		}
	}
	if _, err := loadInChild(filepath.Join(dir, "missing.tsv"), time.Minute); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("a missing file: %v", err)
	}
}

// TestChildTableBadHeader: a memory file that is not a table the child
// wrote is refused, never indexed.
func TestChildTableBadHeader(t *testing.T) {
	for name, size := range map[string]int{"empty": 0, "one page of zeros": os.Getpagesize(), "three pages": 3 * os.Getpagesize()} {
		fd, err := unix.MemfdCreate("test", unix.MFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		mem := os.NewFile(uintptr(fd), "test")
		if err := mem.Truncate(int64(size)); err != nil {
			t.Fatal(err)
		}
		if _, err := mapChildTable(mem); err == nil {
			t.Errorf("%s: mapped", name)
		}
		mem.Close()
	}
}

// TestLoadTableChoosesTheBuild: a big table is built by a child, a small
// one here, and one whose child runs out of time here after it.
func TestLoadTableChoosesTheBuild(t *testing.T) {
	dir := t.TempDir()
	small, big := filepath.Join(dir, "small.tsv"), filepath.Join(dir, "big.tsv")
	writeFile(t, small, "alice\t10.0.0.1:1\n")
	var b strings.Builder
	for i := 0; b.Len() < defaultChildMinSize; i++ {
		fmt.Fprintf(&b, "key-%d\t10.0.0.1:1\n", i)
	}
	writeFile(t, big, b.String())
	for _, c := range []struct {
		path  string
		limit time.Duration
		want  string
	}{
		{small, time.Minute, BuiltHere},
		{big, time.Minute, BuiltByChild},
		{big, time.Nanosecond, BuiltHereLate},
	} {
		tb, err := loadTable(c.path, c.limit)
		if err != nil {
			t.Fatalf("%s: %v", c.path, err)
		}
		if tb.BuiltBy != c.want {
			t.Errorf("%s, limit %v: built %q (%v), want %q", filepath.Base(c.path), c.limit, tb.BuiltBy, err, c.want)
		}
		if got, ok := tb.Lookup("key-7"); c.path == big && (!ok || got[0] != "10.0.0.1:1") {
			t.Errorf("%s: key-7 is %v %v", c.want, got, ok)
		}
	}
}

// TestBuilderRestarts: a builder that died (killed, or gone after being
// idle) is started again at the next build.
func TestBuilderRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.tsv")
	writeFile(t, path, "alice\t10.0.0.1:1\n")
	for i := range 3 {
		tb, err := loadInChild(path, time.Minute)
		if err != nil {
			t.Fatalf("build %d: %v", i, err)
		}
		if got, ok := tb.Lookup("alice"); !ok || got[0] != "10.0.0.1:1" {
			t.Fatalf("build %d: alice is %v %v", i, got, ok)
		}
		tb.mem.release()
		theBuilder.mu.Lock()
		cmd, exited := theBuilder.cmd, theBuilder.exited
		theBuilder.mu.Unlock()
		if cmd == nil {
			t.Fatal("no builder after a build")
		}
		_ = cmd.Process.Kill()
		<-exited
	}
}
