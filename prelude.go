// Package prelude registers every Caddy Prelude module. Build Caddy with it:
//
//	xcaddy build --with github.com/caddyprelude/prelude
//
// or use ./cmd/caddy, which is Caddy with its standard modules, caddy-l4 and
// this suite.
package prelude

import (
	_ "github.com/caddyprelude/prelude/modules/amqpreplay"
	_ "github.com/caddyprelude/prelude/modules/l4amqp"
	_ "github.com/caddyprelude/prelude/modules/l4amqpstream"
	_ "github.com/caddyprelude/prelude/modules/l4foo"
	_ "github.com/caddyprelude/prelude/modules/l4git"
	_ "github.com/caddyprelude/prelude/modules/l4reply"
	_ "github.com/caddyprelude/prelude/modules/l4socks4"
	_ "github.com/caddyprelude/prelude/modules/l4zmtp"
	_ "github.com/caddyprelude/prelude/modules/preludeadmin"
)
