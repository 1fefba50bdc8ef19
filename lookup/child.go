package lookup

import (
	"encoding/binary"
	"errors"
	"sync/atomic"
	"time"
)

// A table is built in a child process where the OS allows it
// (child_linux.go): a parse takes a CPU for about half a second per
// million keys, and run among Caddy's goroutines it keeps one of Go's
// scheduler slots busy the whole time. With Caddy on one CPU the
// scheduler then notices ready connections only through its monitor's
// 10 ms network poll, and connection setups stall for tens of
// milliseconds (BenchmarkLookupReloadStall). Yielding every few lines does
// not help: a goroutine that is always runnable keeps the scheduler from
// polling the network; nor does a parse on a thread of its own with one
// more scheduler slot (GOMAXPROCS+1), measured: two slots on one CPU cost
// the connections more than the parse did. A child process at the lowest
// priority leaves Caddy's scheduler as it was, and the kernel runs
// Caddy's threads, woken by the network, ahead of it.
//
// The child is this same executable, started with childprio.BuilderEnv
// set, kept while tables change (builder_linux.go: a process started per
// build held a scheduler slot for its vfork, milliseconds on a busy CPU).
// It builds each table into a memory file laid out as a header page, the
// arena (the table's text) and, from the next page boundary, the index's
// slots, and hands the file over; the parent maps it read only. The key
// hash is seeded xxHash64 (Table.hash), so the parent can look keys up
// in an index the child built.

// childBuilds turns child processes on (Linux). The environment variable
// PRELUDE_LOOKUP_BUILD=here turns them off (to compare, or where a
// process may not start another); tests turn them off to test the
// parent's own build.
var childBuilds atomic.Bool

// childMinSize is the smallest table built in a child (bytes): a child
// costs about 80 ms of CPU in Caddy's start-up, and a smaller table
// parses here in well under a millisecond.
var childMinSize atomic.Int64

// childLimit is how long a child may take. Its low priority means that on
// a CPU other work keeps busy it may get almost nothing done: then it is
// stopped and the table is built here, at Caddy's own priority.
var childLimit atomic.Int64

// firstLoadLimit is childLimit for a File's first load, at config load:
// a builder starved by other work would hold the whole config load up.
var firstLoadLimit atomic.Int64

// Defaults of childMinSize, childLimit and firstLoadLimit; tests change
// them.
const (
	defaultChildMinSize   = 64 << 10
	defaultChildLimit     = 5 * time.Second
	defaultFirstLoadLimit = 2 * time.Second
)

func init() {
	childMinSize.Store(defaultChildMinSize)
	childLimit.Store(int64(defaultChildLimit))
	firstLoadLimit.Store(int64(defaultFirstLoadLimit))
}

// How a table was built (Table.BuiltBy).
const (
	BuiltByChild  = "child"
	BuiltHere     = "here"
	BuiltHereLate = "here, the child ran out of time"
)

// childParseFailed is the exit code of a child whose table did not parse;
// its standard error then holds the reason.
const childParseFailed = 86

// errNoChild is a table a child process could not build (none could be
// started, or it failed in some way other than a parse error): the
// parent builds it itself.
var errNoChild = errors.New("no child process to build the table")

// tableHeader is the memory file's first page.
type tableHeader struct {
	magic, page, arenaLen, idxOff, slots, n, seed uint64
}

// tableMagic marks a header written by this layout.
const tableMagic = 0x316c62745f6c6572 // "rel_tbl1"

func (h tableHeader) put(b []byte) {
	for i, v := range []uint64{h.magic, h.page, h.arenaLen, h.idxOff, h.slots, h.n, h.seed} {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
}

func getHeader(b []byte) tableHeader {
	u := func(i int) uint64 { return binary.LittleEndian.Uint64(b[8*i:]) }
	return tableHeader{u(0), u(1), u(2), u(3), u(4), u(5), u(6)}
}

// valid reports whether h describes a mapping of size bytes made with
// page-size pages.
func (h tableHeader) valid(size, page uint64) bool {
	return h.magic == tableMagic && h.page == page && size >= page &&
		h.idxOff%page == 0 && page+h.arenaLen <= h.idxOff &&
		h.slots >= 8 && h.idxOff+h.slots*uint64(slotSize) == size && h.n < h.slots
}
