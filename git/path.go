package git

import (
	"fmt"
	"strings"
)

// CleanPath collapses repeated slashes, so that "/" + "/alice/p.git"
// becomes "/alice/p.git", and reports whether git daemon would accept the
// result: it must start with "/" and contain no "." or ".." segment
// (daemon.c path_ok and enter_repo refuse "/./", "/../", a trailing "/."
// or "/..").
func CleanPath(p string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && b.Len() > 0 && strings.HasSuffix(b.String(), "/") {
			continue
		}
		b.WriteByte(p[i])
	}
	clean := b.String()
	if !strings.HasPrefix(clean, "/") {
		return clean, fmt.Errorf("path %q does not start with /", clean)
	}
	for _, seg := range strings.Split(clean, "/") {
		if seg == "." || seg == ".." {
			return clean, fmt.Errorf("path %q has a %q segment", clean, seg)
		}
	}
	if strings.ContainsRune(clean, 0) {
		return clean, fmt.Errorf("path contains NUL")
	}
	return clean, nil
}
