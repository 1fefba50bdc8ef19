package foo

import (
	"errors"
	"strconv"
)

// ErrRemapFull means a shared server connection has as many requests
// outstanding as its Remap allows.
var ErrRemapFull = errors.New("foo: too many requests outstanding on the shared server connection")

// Remap numbers the requests many clients send over one shared server
// connection, so that their Seqs cannot collide there, and maps each answer
// back to the client and Seq it answers. It is not safe for concurrent use.
// Its memory is bounded by Max outstanding requests.
type Remap[C comparable] struct {
	// Max outstanding requests; 0 means DefaultRemapMax.
	Max  int
	next uint64
	out  map[uint64]remapped[C]
}

// DefaultRemapMax bounds a Remap without Max.
const DefaultRemapMax = 1 << 16

type remapped[C comparable] struct {
	client C
	seq    uint64
}

// Request gives client's request seq the Seq it carries on the shared
// connection.
func (r *Remap[C]) Request(client C, seq uint64) (uint64, error) {
	max := r.Max
	if max <= 0 {
		max = DefaultRemapMax
	}
	if len(r.out) >= max {
		return 0, ErrRemapFull
	}
	if r.out == nil {
		r.out = map[uint64]remapped[C]{}
	}
	r.next++
	for _, taken := r.out[r.next]; taken; _, taken = r.out[r.next] {
		r.next++ // wrapped around onto a request still outstanding
	}
	r.out[r.next] = remapped[C]{client, seq}
	return r.next, nil
}

// Answer returns the client and Seq an answer with the shared Seq seq is
// for, and forgets the request; ok is false for a Seq nobody asked (a late
// answer for a client that left, or a server's error).
func (r *Remap[C]) Answer(seq uint64) (client C, orig uint64, ok bool) {
	m, ok := r.out[seq]
	if ok {
		delete(r.out, seq)
	}
	return m.client, m.seq, ok
}

// Forget drops client's outstanding requests (it left) and returns how many.
func (r *Remap[C]) Forget(client C) int {
	n := 0
	for k, m := range r.out {
		if m.client == client {
			delete(r.out, k)
			n++
		}
	}
	return n
}

// Drain forgets every outstanding request and calls f for each, for the
// proxy to answer them itself when the shared connection is lost.
func (r *Remap[C]) Drain(f func(client C, seq uint64)) {
	for k, m := range r.out {
		delete(r.out, k)
		f(m.client, m.seq)
	}
}

// Outstanding is the number of requests awaiting an answer.
func (r *Remap[C]) Outstanding() int { return len(r.out) }

// AppendLine appends m as a line with Seq seq: "TYPE seq[ data]\n".
func AppendLine(dst []byte, m Msg, seq uint64) []byte {
	dst = append(dst, m.Type.String()...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, seq, 10)
	if m.Data != nil {
		dst = append(dst, ' ')
		dst = append(dst, m.Data...)
	}
	return append(dst, '\n')
}
