//go:build !linux

package lookup

// loadInChild is only on Linux: elsewhere the parent builds every table.
func loadInChild(string) (*Table, error) { return nil, errNoChild }

var childBuilds = false
