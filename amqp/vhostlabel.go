package amqp

import "strings"

// VhostLabel turns a virtual host name into a DNS label (RFC 1035 §2.3.1,
// lowercase), so that a broker address can be built from it
// (`{l4.amqp.vhost_label}.brokers.internal:5672`) and DNS becomes the
// routing table: one leading "/" is dropped, ASCII letters are lowercased,
// every byte that is not a letter, digit or "-" becomes "-", leading and
// trailing "-" are trimmed, and the result is cut to 63 bytes. The
// default vhost "/" (and any name left empty) is "default".
//
// Different names can share a label ("a_b" and "a.b" are both "a-b",
// "Orders" and "orders" both "orders"); operators who route by label
// name their vhosts so that they do not.
func VhostLabel(vhost string) string {
	vhost = strings.TrimPrefix(vhost, "/")
	b := make([]byte, 0, min(len(vhost), 63))
	for i := 0; i < len(vhost) && len(b) < 63; i++ {
		c := vhost[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-':
		default:
			c = '-'
		}
		b = append(b, c)
	}
	if s := strings.Trim(string(b), "-"); s != "" {
		return s
	}
	return "default"
}
