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
// that serve it, the name of a farm of the config that serves it, or a
// refusal with a reason the client is told (an authorisation gate:
// amqpprox's HTTP auth, GitLab's /allowed). Exactly one of the three is
// set.
type Answer struct {
	Addrs  []string `json:"to,omitempty"`
	Farm   string   `json:"farm,omitempty"`
	Refuse string   `json:"refuse,omitempty"`
}

// FarmPrefix starts a plain answer (a TSV value, a Redis string) that
// names a farm instead of listing addresses: "farm:blue". No address can
// look like it: an address's port is a number.
const FarmPrefix = "farm:"

// MaxFarmName bounds a farm's name in an answer.
const MaxFarmName = 64

// CheckFarmName reports whether name can name a farm: 1 to MaxFarmName
// letters, digits, '.', '_' or '-'.
func CheckFarmName(name string) error {
	if name == "" || len(name) > MaxFarmName {
		return fmt.Errorf("farm name %q is empty or longer than %d bytes", name, MaxFarmName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("farm name %q holds %q: only letters, digits, '.', '_' and '-'", name, c)
		}
	}
	return nil
}

// TableAnswer is the answer for a table's value, split at commas (as
// Table.Lookup returns it): a farm for a lone "farm:<name>", else the
// addresses.
func TableAnswer(value []string) Answer {
	if len(value) == 1 {
		if name, ok := strings.CutPrefix(value[0], FarmPrefix); ok {
			return Answer{Farm: name}
		}
	}
	return Answer{Addrs: value}
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
// {"to": ["host:port", …]}, {"farm": "name"} or {"refuse": "reason"}, or
// a bare comma-separated address list (`host:port[,host:port…]`, as a TSV
// table's value and a Redis string hold) or "farm:<name>". Every address
// must pass
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
	case bytes.HasPrefix(b, []byte(FarmPrefix)):
		return farmAnswer(string(b[len(FarmPrefix):]))
	}
	return parseAddrList(string(b))
}

func parseJSONAnswer(b []byte) (Answer, error) {
	var a Answer
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return Answer{}, fmt.Errorf("%w: not {\"to\": [addresses]}, {\"farm\": name} or {\"refuse\": reason}: %v", ErrBadAnswer, err)
	}
	if dec.More() {
		return Answer{}, fmt.Errorf("%w: data after the JSON object", ErrBadAnswer)
	}
	set := 0
	for _, ok := range []bool{a.Refuse != "", len(a.Addrs) > 0, a.Farm != ""} {
		if ok {
			set++
		}
	}
	switch {
	case set > 1:
		return Answer{}, fmt.Errorf("%w: more than one of to, farm and refuse", ErrBadAnswer)
	case a.Farm != "":
		return farmAnswer(a.Farm)
	case a.Refuse != "":
		if a.Refuse = cleanReason(a.Refuse); a.Refuse == "" {
			a.Refuse = "refused by the lookup service"
		}
		return a, nil
	case len(a.Addrs) == 0:
		return Answer{}, fmt.Errorf("%w: no address, farm or refusal", ErrBadAnswer)
	}
	if err := checkAddrs(a.Addrs); err != nil {
		return Answer{}, err
	}
	return a, nil
}

func farmAnswer(name string) (Answer, error) {
	if err := CheckFarmName(name); err != nil {
		return Answer{}, fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	return Answer{Farm: name}, nil
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
