package lookup

import (
	"fmt"
	"math/bits"
	"syscall"
	"unsafe"
)

// index is a Table's hash index: open addressing with linear probing over
// slots in memory mapped outside the Go heap, each slot a key's 64-bit
// hash and its line's place in the arena. It holds no pointers and is not
// in the Go heap, so the garbage collector neither scans it nor counts it
// towards its heap goal; at most 4/5 of the slots are used (about 1.6
// probes per hit, a cache line holding four slots).
type index struct {
	slots []slot
	n     int
	mem   []byte // the mapping, for free
}

// slot is one key; klen 0 marks it empty (keys are never empty).
type slot struct {
	h uint64
	r row
}

// slotSize is a slot's size in memory: 16 bytes.
const slotSize = int(unsafe.Sizeof(slot{}))

// indexSlots is the number of slots of an index for up to keys keys.
func indexSlots(keys int) int { return max(8, keys+keys/4+1) }

// newIndex makes an index for up to keys keys, in memory of its own.
func newIndex(keys int) (*index, error) {
	size := indexSlots(keys)
	mem, err := syscall.Mmap(-1, 0, size*slotSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("mapping an index of %d slots: %w", size, err)
	}
	x := indexOver(mem)
	x.mem = mem
	return x, nil
}

// indexOver is an index whose slots are mem (zeroed, a multiple of
// slotSize, 8-byte aligned), which its owner frees.
func indexOver(mem []byte) *index {
	return &index{slots: unsafe.Slice((*slot)(unsafe.Pointer(unsafe.SliceData(mem))), len(mem)/slotSize)}
}

// free unmaps the index's own memory; it must not be used afterwards.
func (x *index) free() {
	if x.mem != nil {
		_ = syscall.Munmap(x.mem)
	}
}

// home is h's first slot: h scaled onto the slots (Lemire's fast range).
func (x *index) home(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(x.slots)))
	return int(hi)
}

// find returns the row of key, whose hash is h.
func (x *index) find(t *Table, h uint64, key string) (row, bool) {
	for i := x.home(h); ; {
		s := &x.slots[i]
		if s.r.klen == 0 {
			return row{}, false
		}
		if s.h == h && string(t.key(s.r)) == key {
			return s.r, true
		}
		if i++; i == len(x.slots) {
			i = 0
		}
	}
}

// insert adds r, whose key hashes to h, unless the key is there already.
func (x *index) insert(t *Table, h uint64, r row) (dup bool) {
	key := t.key(r)
	for i := x.home(h); ; {
		s := &x.slots[i]
		if s.r.klen == 0 {
			*s = slot{h: h, r: r}
			x.n++
			return false
		}
		if s.h == h && string(t.key(s.r)) == string(key) {
			return true
		}
		if i++; i == len(x.slots) {
			i = 0
		}
	}
}
