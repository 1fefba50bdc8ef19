package lookup

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/caddyprelude/prelude/lookup/internal/childprio"
)

func init() {
	if path := os.Getenv(childprio.Env); path != "" {
		os.Exit(childMain(path))
	}
	childBuilds.Store(os.Getenv("PRELUDE_LOOKUP_BUILD") != "here")
}

// childMain builds the table at path into descriptor 3. It runs in a
// package init, on the main thread, before the program's main, at the
// priority childprio set.
func childMain(path string) int {
	if err := buildTable(os.NewFile(3, "table"), path); err != nil {
		fmt.Fprint(os.Stderr, err.Error())
		return childParseFailed
	}
	return 0
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

// loadInChild builds the table at path in a child process and maps it.
// A table that does not parse gives the child's error; anything else that
// goes wrong, including a child not done within limit, gives errNoChild.
func loadInChild(path string, limit time.Duration) (*Table, error) {
	if !childBuilds.Load() {
		return nil, errNoChild
	}
	fd, err := unix.MemfdCreate("prelude-lookup-table", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoChild, err)
	}
	mem := os.NewFile(uintptr(fd), "prelude-lookup-table")
	// The running executable, even if a newer one replaced its file.
	cmd := exec.Command("/proc/self/exe")
	cmd.Env = append(os.Environ(), childprio.Env+"="+path, "GOMAXPROCS=1",
		// A binary built with the race detector (tests) otherwise sleeps a
		// second at exit; others ignore it.
		"GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cmd.ExtraFiles = []*os.File{mem}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoChild, err)
	}
	stderr := &capped{max: 4 << 10}
	if err = cmd.Start(); err == nil {
		childprio.LowerThread(cmd.Process.Pid)
		timer := time.AfterFunc(limit, func() { _ = cmd.Process.Kill() })
		defer timer.Stop()
		// Until the child exits, wait on its standard error, through Go's
		// network poller: Wait's waitid(2) would hold this thread's
		// scheduler slot until Go's monitor took it back, up to 10 ms
		// later, which Caddy's connections would feel.
		_, _ = io.Copy(stderr, pipe)
		err = cmd.Wait()
	}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit) && exit.ExitCode() == childParseFailed:
		mem.Close()
		return nil, errors.New(stderr.String())
	case err != nil:
		mem.Close()
		return nil, fmt.Errorf("%w: %v: %s", errNoChild, err, stderr.String())
	}
	// Killed by the timer just as it was done: its table is whole.
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

// capped keeps the first max bytes written to it.
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
