// Package l4reply is layer4.handlers.reply: write bytes to the client, then
// either go on to the next handler (ProxyMachine's :reply) or close the
// connection (ProxyMachine's :close with a message).
package l4reply

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/mholt/caddy-l4/layer4"

	"github.com/caddyprelude/prelude/modules/relay"
)

func init() {
	caddy.RegisterModule(&Reply{})
}

// Reply writes Text (placeholders replaced) or Hex bytes to the client.
type Reply struct {
	// Text to send; {placeholders} are replaced, and the escapes \n \r \t
	// \0 \\ and \xNN stand for their bytes (Caddyfile strings keep them
	// as written).
	Text string `json:"text,omitempty"`
	// Bytes to send, hex-encoded, for binary replies ("005a000000000000").
	Hex string `json:"hex,omitempty"`
	// Close the connection after the reply instead of calling the next handler.
	Close bool `json:"close,omitempty"`

	raw  []byte
	text string
}

// CaddyModule returns the Caddy module information.
func (*Reply) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "layer4.handlers.reply",
		New: func() caddy.Module { return new(Reply) },
	}
}

// Provision decodes Hex and the escapes in Text.
func (r *Reply) Provision(caddy.Context) error {
	r.text = unescape(r.Text)
	if r.Hex == "" {
		return nil
	}
	b, err := hex.DecodeString(r.Hex)
	if err != nil {
		return fmt.Errorf("hex: %v", err)
	}
	r.raw = b
	return nil
}

// Validate requires exactly one of Text and Hex.
func (r *Reply) Validate() error {
	if (r.Text == "") == (r.Hex == "") {
		return errors.New("text, hex: exactly one is required")
	}
	return nil
}

// Handle writes the reply, then closes or continues.
func (r *Reply) Handle(cx *layer4.Connection, next layer4.Handler) error {
	b := r.raw
	if r.Text != "" {
		repl := cx.Context.Value(layer4.ReplacerCtxKey).(*caddy.Replacer)
		b = []byte(repl.ReplaceAll(r.text, ""))
	}
	_ = cx.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := cx.Write(b); err != nil {
		return fmt.Errorf("writing reply: %w", err)
	}
	_ = cx.SetWriteDeadline(time.Time{})
	if r.Close {
		relay.CloseAfterReply(cx.Conn, time.Second)
		return nil
	}
	return next.Handle(cx)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	reply <text> [close]
//	reply {
//		text <text>
//		hex <hex bytes>
//		close
//	}
func (r *Reply) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // handler name
	if d.NextArg() {
		r.Text = d.Val()
		if d.NextArg() {
			if d.Val() != "close" {
				return d.Errf("reply: expected close after the text, got %q", d.Val())
			}
			r.Close = true
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "text", "hex":
			if !d.NextArg() {
				return d.ArgErr()
			}
			if opt == "text" {
				r.Text = d.Val()
			} else {
				r.Hex = d.Val()
			}
		case "close":
			r.Close = true
		default:
			return d.Errf("unknown reply option %q", opt)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Reply)(nil)
	_ caddy.Validator       = (*Reply)(nil)
	_ layer4.NextHandler    = (*Reply)(nil)
	_ caddyfile.Unmarshaler = (*Reply)(nil)
)

// unescape turns \n \r \t \0 \\ and \xNN into their bytes and leaves
// any other backslash as it is.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch n := s[i+1]; n {
		case 'n', 'r', 't', '0', '\\':
			b.WriteByte(map[byte]byte{'n': '\n', 'r': '\r', 't': '\t', '0': 0, '\\': '\\'}[n])
			i++
		case 'x':
			if v, err := strconv.ParseUint(s[i+2:min(i+4, len(s))], 16, 8); err == nil && i+4 <= len(s) {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
