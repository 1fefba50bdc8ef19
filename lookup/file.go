package lookup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// File is a Table read from a TSV file (or a JSON map, for a path ending
// in .json: JSONToTSV) and read again whenever the file
// changes (its size, modification time or inode: an editor's in-place save
// and a rename over it both count). A file that does not parse keeps the
// last good table; Err says why until a good one replaces it.
//
// It polls with stat(2) every interval rather than using inotify: polling
// sees a file replaced by rename (the safe way to publish a table) without
// watching its directory, works on every file system, and costs one system
// call per interval.
type File struct {
	path  string
	table atomic.Pointer[Table]
	err   atomic.Pointer[error]
	seen  fileStamp
	// Loaded is called (on the watching goroutine) after each load attempt,
	// with how long it took and the error if it failed. Optional; set
	// before Watch.
	Loaded func(t *Table, took time.Duration, err error)
}

// fileStamp is what says a file changed.
type fileStamp struct {
	size  int64
	mtime time.Time
	ino   uint64
}

// OpenFile reads the table at path. It fails if the first read does.
func OpenFile(path string) (*File, error) {
	f := &File{path: path}
	if err := f.load(time.Duration(firstLoadLimit.Load())); err != nil {
		return nil, err
	}
	return f, nil
}

// Table is the current table; never nil after OpenFile. Use Lookup to
// look keys up: a table a reload replaced is unmapped once the lookups
// under way through Lookup are done, and calling its Lookup then crashes.
// Len is safe on any table.
func (f *File) Table() *Table { return f.table.Load() }

// Lookup looks key up in the current table.
func (f *File) Lookup(key string) ([]string, bool) {
	for {
		t := f.table.Load()
		t.readers.Add(1)
		// Still current: retire(t) has not begun, or sees this reader
		// and waits for it.
		if f.table.Load() == t {
			addrs, ok := t.Lookup(key)
			t.readers.Add(-1)
			return addrs, ok
		}
		t.readers.Add(-1) // replaced meanwhile: use the new one
	}
}

// retire unmaps a table a reload replaced, once the lookups that began
// before the replacement are done. The memory is outside the Go heap:
// waiting for the collector to find the table unreachable could keep many
// replaced tables mapped when reloads are frequent and the heap is quiet.
func retire(t *Table) {
	for t.readers.Load() != 0 {
		time.Sleep(time.Millisecond)
	}
	t.mem.release()
}

// Err is why the last reload failed, or nil if the table is the file's
// current content.
func (f *File) Err() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

// Watch reloads the table whenever the file changes, checking every
// interval, until ctx ends.
func (f *File) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := stamp(f.path)
		if err == nil && st == f.seen {
			continue
		}
		start := time.Now()
		if err == nil {
			err = f.reload()
		} else {
			f.seen = fileStamp{} // read it again once it is back
			f.fail(err)
		}
		if f.Loaded != nil {
			f.Loaded(f.table.Load(), time.Since(start), err)
		}
	}
}

// reload reads the file; on success the table is replaced at once (readers
// see the old or the new one, never a mix).
func (f *File) reload() error { return f.load(time.Duration(childLimit.Load())) }

// load reads the file, giving a builder process limit to build it.
func (f *File) load(limit time.Duration) error {
	st, err := stamp(f.path)
	if err != nil {
		return f.fail(err)
	}
	t, err := loadTable(f.path, limit)
	if err != nil {
		return f.fail(err)
	}
	f.seen = st
	old := f.table.Swap(t)
	f.err.Store(nil)
	if old != nil {
		go retire(old)
	}
	return nil
}

// loadTable reads and indexes the table at path: in a child process where
// it can (child_linux.go), else in this one.
//
// A table under childMinSize is built here, and so is one whose child
// failed or ran out of time (limit).
func loadTable(path string, limit time.Duration) (*Table, error) {
	if fi, err := os.Stat(path); err == nil && fi.Size() < childMinSize.Load() {
		return loadHere(path)
	}
	start := time.Now()
	t, err := loadInChild(path, limit)
	if !errors.Is(err, errNoChild) {
		return t, err
	}
	t, err = loadHere(path)
	if t != nil && time.Since(start) >= limit {
		t.BuiltBy = BuiltHereLate
	}
	return t, err
}

// loadHere reads and indexes the table at path in this process.
func loadHere(path string) (*Table, error) {
	b, free, err := readArena(path)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(path, ".json") {
		tsv, err := JSONToTSV(b)
		free()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		b, free = tsv, func() {} // a heap arena: JSON tables are the small ones
	}
	if err := checkComplete(path, b); err != nil {
		free()
		return nil, err
	}
	t, err := ParseTSVBytes(b)
	if err != nil {
		free()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ownArena(t, free)
	t.BuiltBy = BuiltHere
	return t, nil
}

// checkComplete refuses a table whose last line has no newline.
func checkComplete(path string, b []byte) error {
	if len(b) > 0 && b[len(b)-1] != '\n' {
		return fmt.Errorf("%s: the last line has no newline: the file is incomplete (being written, or truncated)", path)
	}
	return nil
}

func (f *File) fail(err error) error {
	f.err.Store(&err)
	return err
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}
