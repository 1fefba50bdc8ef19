package lookup

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"syscall"
)

// readArena reads the file at path into memory mapped outside the Go heap,
// so that a table's text does not count towards the collector's heap goal
// (a 40 MB table would otherwise leave up to 40 MB more of headroom, with
// GOGC 100). free unmaps it; the caller hands it to ownArena once a table
// holds it, and calls it itself otherwise.
func readArena(path string) (b []byte, free func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	size := fi.Size()
	if size == 0 {
		return nil, func() {}, nil
	}
	if size > 1<<32-1 {
		return nil, nil, fmt.Errorf("%s: the table is larger than 4 GiB", path)
	}
	m, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: mapping %d bytes: %w", path, size, err)
	}
	free = func() { _ = syscall.Munmap(m) }
	if _, err := io.ReadFull(f, m); err != nil {
		free()
		return nil, nil, fmt.Errorf("%s: the file changed while it was read: %v", path, err)
	}
	var one [1]byte
	if n, _ := f.Read(one[:]); n > 0 {
		free()
		return nil, nil, fmt.Errorf("%s: the file grew while it was read", path)
	}
	return m, free, nil
}

// ownArena unmaps t's arena once t is unreachable: nothing else points
// into it (Lookup returns copies, and errors quote copies).
func ownArena(t *Table, free func()) {
	runtime.AddCleanup(t, func(free func()) { free() }, free)
}
