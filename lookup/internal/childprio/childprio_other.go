//go:build !linux

package childprio

// Lower is a no-op where lookup tables are not built in child processes.
func Lower() {}

// LowerThread is a no-op where lookup tables are not built in child
// processes.
func LowerThread(int) {}
