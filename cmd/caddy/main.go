// Command caddy is Caddy with its standard modules, caddy-l4 and every Caddy
// Prelude module: the binary `xcaddy build --with github.com/caddyprelude/prelude`
// produces, built with plain `go build`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/mholt/caddy-l4"

	_ "github.com/caddyprelude/prelude"
)

func main() {
	caddycmd.Main()
}
