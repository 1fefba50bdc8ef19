package lookup

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// An Answer is what a source says about a key it holds: the addresses
// that serve it, or a refusal with a reason the client is told (an
// authorisation gate: amqpprox's HTTP auth, GitLab's /allowed).
// Exactly one of the two is set.
type Answer struct {
	Addrs  []string `json:"to,omitempty"`
	Refuse string   `json:"refuse,omitempty"`
}

// Limits on an answer from a lookup service. A longer value, more
// addresses or a longer reason is a bad answer, never truncated into a
// route.
const (
	MaxAnswerLen    = 64 << 10
	MaxAnswerAddrs  = 64
	MaxRefuseReason = 200 // fits an AMQP reply-text (shortstr) with its prefix
)

// ErrBadAnswer wraps every reason a service's answer is refused.
var ErrBadAnswer = errors.New("bad answer from the lookup service")

// ParseAnswer reads a service's answer for one key: a JSON object
// {"to": ["host:port", …]} or {"refuse": "reason"}, or a bare
// comma-separated address list (`host:port[,host:port…]`, as a TSV
// table's value and a Redis string hold). Every address must pass
// CheckAddress: an answer with one bad address is refused whole, so an
// invalid answer is never dialed.
func ParseAnswer(b []byte) (Answer, error) {
	if len(b) > MaxAnswerLen {
		return Answer{}, fmt.Errorf("%w: the value is longer than %d bytes", ErrBadAnswer, MaxAnswerLen)
	}
	b = bytes.TrimSpace(b)
	switch {
	case len(b) == 0:
		return Answer{}, fmt.Errorf("%w: the value is empty", ErrBadAnswer)
	case b[0] == '{':
		return parseJSONAnswer(b)
	}
	return parseAddrList(string(b))
}

func parseJSONAnswer(b []byte) (Answer, error) {
	var a Answer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Answer{}, fmt.Errorf("%w: not {\"to\": [addresses]} or {\"refuse\": reason}: %v", ErrBadAnswer, err)
	}
	if dec.More() {
		return Answer{}, fmt.Errorf("%w: data after the JSON object", ErrBadAnswer)
	}
	switch {
	case a.Refuse != "" && len(a.Addrs) > 0:
		return Answer{}, fmt.Errorf("%w: both to and refuse", ErrBadAnswer)
	case a.Refuse != "":
		if a.Refuse = cleanReason(a.Refuse); a.Refuse == "" {
			a.Refuse = "refused by the lookup service"
		}
		return a, nil
	case len(a.Addrs) == 0:
		return Answer{}, fmt.Errorf("%w: no address and no refusal", ErrBadAnswer)
	}
	if err := checkAddrs(a.Addrs); err != nil {
		return Answer{}, err
	}
	return a, nil
}

func parseAddrList(s string) (Answer, error) {
	addrs := strings.Split(s, ",")
	for i := range addrs {
		addrs[i] = strings.TrimSpace(addrs[i])
	}
	if err := checkAddrs(addrs); err != nil {
		return Answer{}, err
	}
	return Answer{Addrs: addrs}, nil
}

func checkAddrs(addrs []string) error {
	if len(addrs) > MaxAnswerAddrs {
		return fmt.Errorf("%w: more than %d addresses", ErrBadAnswer, MaxAnswerAddrs)
	}
	for _, a := range addrs {
		if err := CheckAddress(a); err != nil {
			return fmt.Errorf("%w: %v", ErrBadAnswer, err)
		}
	}
	return nil
}

// cleanReason makes a refusal reason safe to send to a client: printable
// characters only, at most MaxRefuseReason bytes, cut at a rune boundary.
func cleanReason(s string) string {
	var b strings.Builder
	for _, r := range s {
		if !unicode.IsPrint(r) {
			r = ' '
		}
		if b.Len()+len(string(r)) > MaxRefuseReason {
			break
		}
		b.WriteRune(r)
	}
	return strings.TrimSpace(b.String())
}
