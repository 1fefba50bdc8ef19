// Package lookup holds routing tables too big for a config: a key (a
// repository owner, a vhost, a user) maps to the addresses that serve it.
// It is pure: no Caddy imports. The farm's lookup sources (issue 20) are
// built on it.
package lookup

import (
	"bytes"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cespare/xxhash/v2"
)

// MaxKeyLen bounds a key, in a table and in a lookup: longer keys are
// refused before anything is looked up or stored.
const MaxKeyLen = 1024

// yieldEvery is how many lines a parse reads between yields of its CPU:
// about 60 µs of work.
const yieldEvery = 128

// yield lets connection setups run beside a reload's parse (measured:
// BenchmarkLookupReloadStall). Parking on a short timer instead was
// measured too, and was no better.
func yield() { runtime.Gosched() }

// maxLineLen bounds a table line (key, tab, addresses).
const maxLineLen = 64 << 10

// A Table is an immutable key → addresses map, compact enough for millions
// of keys: every key and value lives in one byte arena (the table's own
// text), and an index maps a 64-bit hash of each key to its line's place
// in the arena. The index holds no pointers and lives outside the Go heap
// (index.go), and so does a file's arena (readArena): the garbage
// collector neither scans a table nor counts it towards its heap goal, so
// a table of a million keys costs its own size in memory and not that
// again in collector headroom, and a reload gives the collector nothing
// to mark. Both are unmapped once the table is unreachable.
type Table struct {
	arena []byte
	idx   *index
	seed  uint64 // of the key hash: random per table (newSeed)
	mem   *mappings
	// readers counts lookups under way through a File, which unmaps a
	// replaced table once none is left (File.retire).
	readers atomic.Int64
	// BuiltBy says how a File built it: BuiltByChild, BuiltHere or
	// BuiltHereLate; empty for a table parsed by ParseTSV.
	BuiltBy string
}

// mappings are the memory a table maps outside the Go heap, unmapped once:
// by File.retire when a reload replaces the table, or else by a cleanup
// once the table is unreachable.
type mappings struct {
	once     sync.Once
	frees    []func()
	released atomic.Bool
}

func (m *mappings) release() {
	m.once.Do(func() {
		for _, free := range m.frees {
			free()
		}
		m.released.Store(true)
	})
}

// row is a line's place in the arena: the key at off, klen bytes; the
// addresses after it and a tab, vlen bytes. A line is at most maxLineLen
// bytes, so both lengths fit 16 bits.
type row struct {
	off        uint32
	klen, vlen uint16
}

func (t *Table) key(e row) []byte { return t.arena[e.off : e.off+uint32(e.klen)] }

func (t *Table) value(e row) []byte {
	v := e.off + uint32(e.klen) + 1
	return t.arena[v : v+uint32(e.vlen)]
}

// Len is the number of keys.
func (t *Table) Len() int { return t.idx.n }

// Lookup returns key's addresses (copies, not views of the arena), or nil
// and false for a key the table does not hold (or one longer than
// MaxKeyLen).
func (t *Table) Lookup(key string) ([]string, bool) {
	if len(key) > MaxKeyLen {
		return nil, false
	}
	e, ok := t.find(key)
	if !ok {
		return nil, false
	}
	return strings.Split(string(t.value(e)), ","), true
}

// hash is key's 64-bit hash: xxHash64 with the table's seed. Not Go's
// maphash: a table built in a child process (child.go) is used by its
// parent, so the hash must be computable from a seed that can be passed
// along. The seed is random per table, so that a client cannot aim keys
// at one index slot.
func (t *Table) hash(key string) uint64 {
	var d xxhash.Digest
	d.ResetWithSeed(t.seed)
	_, _ = d.WriteString(key)
	return d.Sum64()
}

// newSeed is a random hash seed.
func newSeed() uint64 {
	var b [8]byte
	_, _ = crand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

func (t *Table) find(key string) (row, bool) {
	return t.idx.find(t, t.hash(key), key)
}

// ParseTSV reads a table of lines `key<TAB>address[,address…]`, where an
// address is host:port, or `key<TAB>farm:<name>` (TableAnswer); `#` starts a comment line and blank lines are
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
// over: they are the table's arena (no copy), so the caller must not change
// them afterwards.
func ParseTSVBytes(b []byte) (*Table, error) {
	if len(b) > 1<<32-1 {
		return nil, errors.New("the table is larger than 4 GiB")
	}
	idx, err := newIndex(countLines(b))
	if err != nil {
		return nil, err
	}
	t := &Table{arena: b, idx: idx, seed: newSeed(), mem: &mappings{frees: []func(){idx.free}}}
	if err := t.parse(b); err != nil {
		idx.free()
		return nil, err
	}
	runtime.AddCleanup(t, (*mappings).release, t.mem)
	return t, nil
}

// parse indexes every line of b, the table's arena.
func (t *Table) parse(b []byte) error {
	for n, off := 1, 0; off < len(b); n++ {
		if n%yieldEvery == 0 {
			// A reload parses beside live connection setups: let them run
			// between short stretches (measured: BenchmarkLookupReloadStall).
			yield()
		}
		end := bytes.IndexByte(b[off:], '\n')
		if end < 0 {
			end = len(b) - off
		}
		if end > maxLineLen {
			return fmt.Errorf("line %d: longer than %d bytes", n, maxLineLen)
		}
		line := bytes.TrimRight(b[off:off+end], "\r")
		lineOff := off
		off += end + 1
		if len(bytes.TrimSpace(line)) == 0 || line[0] == '#' {
			continue
		}
		key, val, ok := bytes.Cut(line, []byte{'\t'})
		if !ok {
			return fmt.Errorf("line %d: no tab between the key and its addresses", n)
		}
		if err := checkEntry(key, val); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if err := t.add(row{off: uint32(lineOff), klen: uint16(len(key)), vlen: uint16(len(val))}); err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
	}
	return nil
}

// countLines is an upper bound of the lines in b, counted a chunk at a
// time with yields between (bytes.Count cannot be preempted).
func countLines(b []byte) int {
	n := 1
	for off := 0; off < len(b); off += readChunk {
		n += bytes.Count(b[off:min(off+readChunk, len(b))], []byte{'\n'})
		yield()
	}
	return n
}

// add indexes e, refusing a key already there.
func (t *Table) add(e row) error {
	key := t.key(e)
	if t.idx.insert(t, t.hash(unsafe.String(unsafe.SliceData(key), len(key))), e) {
		return fmt.Errorf("key %q is listed twice", key)
	}
	return nil
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
	if name, ok := bytes.CutPrefix(val, []byte(FarmPrefix)); ok {
		if err := CheckFarmName(string(name)); err != nil {
			return fmt.Errorf("key %q: %w", key, err)
		}
		return nil
	}
	for rest, more := val, true; more; {
		var a []byte
		a, rest, more = bytes.Cut(rest, []byte{','})
		// A view, not a copy: a reload checks millions of addresses, and
		// CheckAddress keeps nothing of its argument (its errors quote a copy).
		if err := CheckAddress(unsafe.String(unsafe.SliceData(a), len(a))); err != nil {
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

// JSONToTSV turns a JSON object mapping each key to its addresses — a
// string "host:port[,host:port…]" or an array of "host:port" strings —
// into the TSV text ParseTSVBytes reads, keys in the object's order. A key
// with a tab, a newline or white space, or a value of another type, is an
// error naming the key; the addresses are checked by the TSV parse.
func JSONToTSV(b []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object of key → addresses")
	}
	var out bytes.Buffer
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("reading the JSON map: %v", err)
		}
		key := t.(string) // object keys are strings
		if strings.ContainsAny(key, " \t\r\n") || key == "" || len(key) > MaxKeyLen {
			return nil, fmt.Errorf("key %q: empty, longer than %d bytes, or with white space", key, MaxKeyLen)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("key %q: %v", key, err)
		}
		var addrs string
		switch v := v.(type) {
		case string:
			addrs = v
		case []any:
			parts := make([]string, 0, len(v))
			for _, a := range v {
				s, ok := a.(string)
				if !ok {
					return nil, fmt.Errorf("key %q: addresses must be strings", key)
				}
				parts = append(parts, s)
			}
			addrs = strings.Join(parts, ",")
		default:
			return nil, fmt.Errorf("key %q: the value must be an address string or an array of them", key)
		}
		if strings.ContainsAny(addrs, "\t\r\n") {
			return nil, fmt.Errorf("key %q: an address holds white space", key)
		}
		out.WriteString(key)
		out.WriteByte('\t')
		out.WriteString(addrs)
		out.WriteByte('\n')
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("reading the JSON map: %v", err)
	}
	if dec.More() || dec.InputOffset() < int64(len(bytes.TrimRight(b, " \t\r\n"))) {
		return nil, errors.New("data after the JSON object")
	}
	return out.Bytes(), nil
}
