package childprio

import "golang.org/x/sys/unix"

// Lower makes the calling thread SCHED_IDLE, or nice 19 where that is
// refused. In a package init that is the main thread, which runs every
// init and then the child's work. The kernel preempts a SCHED_IDLE
// thread at once for any other thread woken on its CPU (Caddy's, woken
// by the network), and gives it a small share (weight 3 against a nice-0
// thread's 1024) while others keep the CPU busy: a reload on a busy CPU
// takes longer, but ends. Measured against nice 19, and against nice 0
// and 5 with a 100 µs slice (BenchmarkLookupReloadStall): only SCHED_IDLE
// kept setups within 1 ms of a quiet Caddy's.
//
// LowerThread(tid) does the same to another thread: the parent lowers a
// child's main thread (whose id is the child's process id) as soon as it
// has started, before the child's own init gets there.
func Lower() { LowerThread(0) }

// LowerThread lowers thread tid (0: the calling thread) as Lower does.
func LowerThread(tid int) {
	err := unix.SchedSetAttr(tid, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}, 0)
	if err != nil {
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, 19)
	}
}
