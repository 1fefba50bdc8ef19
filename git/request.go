// Package git parses the first request of the git:// daemon protocol: one
// pkt-line naming the service, the repository path, the host and extra
// parameters (gitprotocol-pack(5) "Git Transport", gitprotocol-v2(5),
// git-daemon(1), daemon.c). It imports only the standard library.
package git

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

var (
	// ErrNeedMore means the input is a valid prefix of a request.
	ErrNeedMore = errors.New("git: need more bytes")
	// ErrMalformed means no continuation of the input is a valid request.
	ErrMalformed = errors.New("git: malformed request")
)

// MaxPktLen is the largest pkt-line, length prefix included
// (LARGE_PACKET_MAX in git's pkt-line.h).
const MaxPktLen = 65520

// Services a git:// request may name, without their "git-" prefix.
var Services = []string{"upload-pack", "receive-pack", "upload-archive"}

// Request is a parsed git:// first request.
type Request struct {
	Service string   // "upload-pack", "receive-pack" or "upload-archive"
	Path    string   // as sent, e.g. "/alice/proj.git"
	Host    string   // host= parameter, lowercased, port and brackets stripped; "" if absent
	Port    string   // port of the host= parameter; "" if absent
	Extra   []string // extra parameters such as "version=2", in order
	Version int      // from "version=N"; 0 when absent

	tail    []byte // everything after the path's NUL, replayed unchanged
	nul     bool   // the path was NUL-terminated
	newline bool   // the payload ended in "\n", which git daemon strips
}

// ParseRequest parses the request pkt-line at the start of b and returns it
// with the number of bytes it spans. A proper prefix of a request gives
// ErrNeedMore; anything that cannot become one gives ErrMalformed.
func ParseRequest(b []byte) (*Request, int, error) {
	n, err := pktLen(b)
	if err != nil {
		return nil, 0, err
	}
	avail := b[4:min(len(b), n)]
	if !couldStart(avail) {
		return nil, 0, fmt.Errorf("%w: does not start with git-<service>", ErrMalformed)
	}
	if len(b) < n {
		return nil, 0, ErrNeedMore
	}
	r, err := parsePayload(b[4:n])
	if err != nil {
		return nil, 0, err
	}
	return r, n, nil
}

// pktLen reads the 4 hex digits of a pkt-line length.
func pktLen(b []byte) (int, error) {
	for i := 0; i < 4 && i < len(b); i++ {
		if !isHex(b[i]) {
			return 0, fmt.Errorf("%w: pkt-line length %q is not hex", ErrMalformed, b[:i+1])
		}
	}
	if len(b) < 4 {
		return 0, ErrNeedMore
	}
	n, _ := strconv.ParseUint(string(b[:4]), 16, 16)
	switch {
	case n < 4:
		return 0, fmt.Errorf("%w: a special packet (%04x) instead of a request", ErrMalformed, n)
	case n > MaxPktLen:
		return 0, fmt.Errorf("%w: pkt-line of %d bytes exceeds %d", ErrMalformed, n, MaxPktLen)
	}
	return int(n), nil
}

// isHex accepts the lowercase hex digits git writes, and uppercase as git's
// own reader does.
func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// couldStart reports whether p can begin "git-<service> ".
func couldStart(p []byte) bool {
	for _, s := range Services {
		full := "git-" + s + " "
		k := min(len(p), len(full))
		if string(p[:k]) == full[:k] {
			return true
		}
	}
	return false
}

func parsePayload(p []byte) (*Request, error) {
	r := &Request{}
	if bytes.HasSuffix(p, []byte("\n")) {
		p, r.newline = p[:len(p)-1], true
	}
	cmd, rest, ok := bytes.Cut(p, []byte(" "))
	if !ok {
		return nil, fmt.Errorf("%w: no space after the service", ErrMalformed)
	}
	for _, s := range Services {
		if string(cmd) == "git-"+s {
			r.Service = s
		}
	}
	if r.Service == "" {
		return nil, fmt.Errorf("%w: unknown service %q", ErrMalformed, cmd)
	}
	path, tail, nul := bytes.Cut(rest, []byte{0})
	if len(path) == 0 {
		return nil, fmt.Errorf("%w: empty path", ErrMalformed)
	}
	r.Path, r.tail, r.nul = string(path), tail, nul
	if err := r.parseParams(tail); err != nil {
		return nil, err
	}
	return r, nil
}

// parseParams reads "host=<host>\0" and then, after an empty field, the
// extra parameters "\0<key>=<value>\0..." (gitprotocol-pack(5)).
func (r *Request) parseParams(tail []byte) error {
	fields := strings.Split(string(tail), "\x00")
	extra := false
	for i, f := range fields {
		switch {
		case f == "":
			if i < len(fields)-1 {
				extra = true
			}
		case !extra && i == 0 && len(f) >= 5 && strings.EqualFold(f[:5], "host="):
			r.Host, r.Port = splitHost(f[5:])
		case extra:
			r.Extra = append(r.Extra, f)
			if v, ok := strings.CutPrefix(f, "version="); ok {
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return fmt.Errorf("%w: bad %q", ErrMalformed, f)
				}
				r.Version = n
			}
		}
	}
	return nil
}

// splitHost applies git daemon's rules: "[v6]:port" or "host:port" split at
// the last colon; slashes and surrounding dots stripped; lowercased.
func splitHost(h string) (host, port string) {
	if strings.HasPrefix(h, "[") {
		if end := strings.IndexByte(h, ']'); end > 0 {
			host, port = h[1:end], strings.TrimPrefix(h[end+1:], ":")
			return strings.ToLower(host), port
		}
	}
	host = h
	if i := strings.LastIndexByte(h, ':'); i >= 0 && net.ParseIP(h) == nil {
		host, port = h[:i], h[i+1:]
	}
	host = strings.ReplaceAll(host, "/", "")
	host = strings.Trim(host, ".")
	return strings.ToLower(host), port
}

// Owner is the first segment of the path: the user or organisation in
// "/alice/proj.git"; "" for a path with a single segment.
func (r *Request) Owner() string {
	p := strings.TrimPrefix(r.Path, "/")
	if i := strings.IndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return ""
}

// WithPath returns a copy of r whose path is p. Host and extra parameters
// are kept byte for byte.
func (r *Request) WithPath(p string) *Request {
	c := *r
	c.Path = p
	return &c
}

// Append appends r as a pkt-line, its length computed afresh.
func (r *Request) Append(dst []byte) ([]byte, error) {
	payload := "git-" + r.Service + " " + r.Path
	n := 4 + len(payload) + len(r.tail)
	if r.nul {
		n++
	}
	if r.newline {
		n++
	}
	if n > MaxPktLen {
		return nil, fmt.Errorf("git: request of %d bytes exceeds %d", n, MaxPktLen)
	}
	dst = fmt.Appendf(dst, "%04x%s", n, payload)
	if r.nul {
		dst = append(dst, 0)
	}
	dst = append(dst, r.tail...)
	if r.newline {
		dst = append(dst, '\n')
	}
	return dst, nil
}

// AppendError appends the pkt-line "ERR <msg>" that git daemon sends; git
// clients print it as "fatal: remote error: <msg>". Long messages are cut
// to fit one pkt-line; newlines become spaces.
func AppendError(dst []byte, msg string) []byte {
	msg = strings.ReplaceAll(msg, "\n", " ")
	if max := MaxPktLen - 4 - len("ERR "); len(msg) > max {
		msg = msg[:max]
	}
	return fmt.Appendf(dst, "%04xERR %s", 4+len("ERR ")+len(msg), msg)
}
