package lookup

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/caddyprelude/prelude/lookup/internal/childprio"
)

func init() {
	if os.Getenv(childprio.BuilderEnv) != "" {
		os.Exit(serveBuilds())
	}
	childBuilds.Store(os.Getenv("PRELUDE_LOOKUP_BUILD") != "here")
}

// buildTable reads and indexes the table at path into out, in the layout
// child.go describes. Its errors are the ones loadHere gives.
func buildTable(out *os.File, path string) error {
	in, err := os.Open(path)
	if err != nil {
		return err
	}
	defer in.Close()
	var text []byte // a JSON table's TSV; nil for a TSV file, read in place
	var size int64
	if strings.HasSuffix(path, ".json") {
		b, err := io.ReadAll(in)
		if err != nil {
			return err
		}
		if text, err = JSONToTSV(b); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		size = int64(len(text))
	} else {
		fi, err := in.Stat()
		if err != nil {
			return err
		}
		size = fi.Size()
	}
	if size > 1<<32-1 {
		return fmt.Errorf("%s: the table is larger than 4 GiB", path)
	}
	page := int64(os.Getpagesize())
	idxOff := (page + size + page - 1) / page * page
	head, err := mapShared(out, 0, idxOff, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		return err
	}
	defer unmap(head)
	arena := head[page : page+size]
	if text != nil {
		copy(arena, text)
	} else if err := readInto(in, arena); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := checkComplete(path, arena); err != nil {
		return err
	}
	slots := int64(indexSlots(countLines(arena)))
	slotMem, err := mapShared(out, idxOff, slots*int64(slotSize), unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		return err
	}
	defer unmap(slotMem)
	t := &Table{arena: arena, idx: indexOver(slotMem), seed: newSeed()}
	if err := t.parse(arena); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	tableHeader{magic: tableMagic, page: uint64(page), arenaLen: uint64(size), idxOff: uint64(idxOff),
		slots: uint64(slots), n: uint64(t.idx.n), seed: t.seed}.put(head)
	return nil
}

// mapShared grows f to off+n bytes if it is shorter, and maps those n
// bytes of it shared (off a multiple of the page size).
func mapShared(f *os.File, off, n int64, prot int) ([]byte, error) {
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if fi.Size() < off+n {
		if err := f.Truncate(off + n); err != nil {
			return nil, fmt.Errorf("sizing the table's memory to %d bytes: %w", off+n, err)
		}
	}
	p, err := unix.MmapPtr(int(f.Fd()), off, nil, uintptr(n), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mapping %d bytes of the table's memory: %w", n, err)
	}
	return unsafe.Slice((*byte)(p), n), nil
}

// unmap unmaps m, mapped by mapShared.
func unmap(m []byte) {
	if len(m) > 0 {
		_ = unix.MunmapPtr(unsafe.Pointer(&m[0]), uintptr(len(m)))
	}
}

// loadInChild builds the table at path in the builder process and maps
// it. A table that does not parse gives the builder's error; anything
// else that goes wrong, including a build not done within limit, gives
// errNoChild.
func loadInChild(path string, limit time.Duration) (*Table, error) {
	if !childBuilds.Load() {
		return nil, errNoChild
	}
	mem, err := theBuilder.build(path, limit)
	if err != nil {
		return nil, err
	}
	return mapChildTable(mem)
}

// mapChildTable maps, read only, the table a child built into mem, which
// it takes over: the table keeps it open until it is freed.
func mapChildTable(mem *os.File) (*Table, error) {
	fi, err := mem.Stat()
	if err != nil || fi.Size() == 0 {
		mem.Close()
		return nil, fmt.Errorf("%w: the child's table is empty or unreadable (%v)", errNoChild, err)
	}
	m, err := mapShared(mem, 0, fi.Size(), unix.PROT_READ)
	if err != nil {
		mem.Close()
		return nil, fmt.Errorf("%w: %v", errNoChild, err)
	}
	page := uint64(os.Getpagesize())
	h := getHeader(m)
	if !h.valid(uint64(len(m)), page) {
		freeChildTable(mem, m)
		return nil, fmt.Errorf("%w: the child's table has a bad header", errNoChild)
	}
	idx := indexOver(m[h.idxOff:])
	idx.n = int(h.n)
	t := &Table{arena: m[page : page+h.arenaLen], idx: idx, seed: h.seed, BuiltBy: BuiltByChild,
		mem: &mappings{frees: []func(){func() { freeChildTable(mem, m) }}}}
	runtime.AddCleanup(t, (*mappings).release, t.mem)
	return t, nil
}

// freeChildTable unmaps m, the mapping of mem, and frees mem's memory a
// megabyte at a time, yielding between: freeing 60 MB in one munmap or
// close keeps a thread, and its Go scheduler slot, in the kernel for
// milliseconds, which Caddy's connections would feel.
func freeChildTable(mem *os.File, m []byte) {
	for off := 0; off < len(m); off += readChunk {
		n := min(readChunk, len(m)-off)
		_ = unix.MunmapPtr(unsafe.Pointer(&m[off]), uintptr(n))
		_ = unix.Fallocate(int(mem.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(off), int64(n))
		yield()
	}
	mem.Close()
}
