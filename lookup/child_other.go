//go:build !linux

package lookup

import "time"

// loadInChild is only on Linux: elsewhere the parent builds every table.
func loadInChild(string, time.Duration) (*Table, error) { return nil, errNoChild }
