package lookup

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// readChunk is how much readArena reads at once.
const readChunk = 1 << 20

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
	if err := readInto(f, m); err != nil {
		free()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, free, nil
}

// readInto fills m with f's content, which must be exactly len(m) bytes.
func readInto(f *os.File, m []byte) error {
	for off := 0; off < len(m); off += readChunk {
		// In chunks, yielding between them: one read of the whole file
		// keeps a thread in the kernel for tens of milliseconds, which a
		// Caddy on one CPU takes from its connections.
		if _, err := io.ReadFull(f, m[off:min(off+readChunk, len(m))]); err != nil {
			return fmt.Errorf("the file changed while it was read: %v", err)
		}
		yield()
	}
	var one [1]byte
	if n, _ := f.Read(one[:]); n > 0 {
		return errors.New("the file grew while it was read")
	}
	return nil
}

// ownArena makes free part of t's mappings: t's arena is unmapped with
// its index. Nothing else points into the arena (Lookup returns copies,
// and errors quote copies).
func ownArena(t *Table, free func()) { t.mem.frees = append(t.mem.frees, free) }
