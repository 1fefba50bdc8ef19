// Package childprio lowers the priority of a lookup child process (the
// executable started again to build a table: lookup/child.go) before
// anything else in it runs. It has no dependencies but the standard
// library's os and x/sys, and its import path sorts before Caddy's, so
// Go initializes it before nearly every other package (Go 1.21+ orders
// package initialization by import path where dependencies allow): the
// child's start-up, about 70 ms of a CPU in Caddy's package inits, then
// runs at the low priority too.
package childprio

import "os"

// BuilderEnv, set to 1, makes a child a table builder that serves its
// parent's requests until its parent goes.
const BuilderEnv = "PRELUDE_LOOKUP_TABLE_BUILDER"

func init() {
	if os.Getenv(BuilderEnv) != "" {
		Lower()
	}
}
