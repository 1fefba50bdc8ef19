package l4reply

import "testing"

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`HELLO\n`:       "HELLO\n",
		`a\r\nb`:        "a\r\nb",
		`\x00\x5a\t`:    "\x00\x5a\t",
		`\0`:            "\x00",
		`back\\slash`:   `back\slash`,
		`{l4.git.repo}`: "{l4.git.repo}",
		`odd\q\`:        `odd\q\`,
		`short\x5`:      `short\x5`,
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
