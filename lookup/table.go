// Package lookup holds routing tables too big for a config: a key (a
// repository owner, a vhost, a user) maps to the addresses that serve it.
// It is pure: no Caddy imports. The farm's lookup sources (issue 20) are
// built on it.
package lookup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"unsafe"
)

// MaxKeyLen bounds a key, in a table and in a lookup: longer keys are
// refused before anything is looked up or stored.
const MaxKeyLen = 1024

// yieldEvery is how many lines a parse reads between yields of its CPU:
// about half a millisecond of work.
const yieldEvery = 1024

// maxLineLen bounds a table line (key, tab, addresses).
const maxLineLen = 64 << 10

// A Table is an immutable key → addresses map, compact enough for millions
// of keys: every key and value lives in one byte arena (the table's own
// text), and the map holds only the key (a string over the arena) and the
// value's position in it.
type Table struct {
	arena string
	index map[string]span
}

// span is a value's place in the arena: offset and length.
type span struct{ off, len uint32 }

// Len is the number of keys.
func (t *Table) Len() int { return len(t.index) }

// Lookup returns key's addresses, or nil and false for a key the table does
// not hold (or one longer than MaxKeyLen).
func (t *Table) Lookup(key string) ([]string, bool) {
	if len(key) > MaxKeyLen {
		return nil, false
	}
	s, ok := t.index[key]
	if !ok {
		return nil, false
	}
	return strings.Split(t.arena[s.off:s.off+s.len], ","), true
}

// ParseTSV reads a table of lines `key<TAB>address[,address…]`, where an
// address is host:port; `#` starts a comment line and blank lines are
// skipped. A malformed line fails the whole table, naming its number, so
// that a half-written file never replaces a good table. A key listed twice
// is an error too.
func ParseTSV(r io.Reader) (*Table, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	return ParseTSVBytes(b)
}

// ParseTSVBytes is ParseTSV over the bytes of a whole table, which it takes
// over: the table's keys and addresses are the bytes themselves (no copy),
// so the caller must not change them afterwards.
func ParseTSVBytes(b []byte) (*Table, error) {
	if len(b) > 1<<32-1 {
		return nil, errors.New("the table is larger than 4 GiB")
	}
	arena := unsafe.String(unsafe.SliceData(b), len(b))
	t := &Table{arena: arena, index: make(map[string]span, bytes.Count(b, []byte{'\n'})+1)}
	for n, off := 1, 0; off < len(b); n++ {
		if n%yieldEvery == 0 {
			// A reload parses beside live connection setups: let them run
			// between short stretches (measured: BenchmarkLookupReloadStall).
			runtime.Gosched()
		}
		end := bytes.IndexByte(b[off:], '\n')
		if end < 0 {
			end = len(b) - off
		}
		if end > maxLineLen {
			return nil, fmt.Errorf("line %d: longer than %d bytes", n, maxLineLen)
		}
		line := bytes.TrimRight(b[off:off+end], "\r")
		lineOff := off
		off += end + 1
		if len(bytes.TrimSpace(line)) == 0 || line[0] == '#' {
			continue
		}
		key, val, ok := bytes.Cut(line, []byte{'\t'})
		if !ok {
			return nil, fmt.Errorf("line %d: no tab between the key and its addresses", n)
		}
		if err := checkEntry(key, val); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		k := arena[lineOff : lineOff+len(key)]
		if _, dup := t.index[k]; dup {
			return nil, fmt.Errorf("line %d: key %q is listed twice", n, k)
		}
		t.index[k] = span{uint32(lineOff + len(key) + 1), uint32(len(val))}
	}
	return t, nil
}

// checkEntry validates one line's key and addresses.
func checkEntry(key, val []byte) error {
	switch {
	case len(key) == 0:
		return errors.New("empty key")
	case len(key) > MaxKeyLen:
		return fmt.Errorf("key longer than %d bytes", MaxKeyLen)
	case bytes.ContainsAny(key, " \t"):
		return fmt.Errorf("key %q contains white space", key)
	}
	if len(val) == 0 {
		return fmt.Errorf("key %q has no address", key)
	}
	for _, a := range bytes.Split(val, []byte{','}) {
		if err := CheckAddress(string(a)); err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
	}
	return nil
}

// CheckAddress reports whether a is host:port with a non-empty host and a
// port from 1 to 65535, as a member address must be before it is dialed.
func CheckAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("address %q is not host:port", a)
	}
	if host == "" || strings.ContainsAny(host, " \t/") {
		return fmt.Errorf("address %q has no valid host", a)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("address %q has no valid port", a)
	}
	return nil
}
