// Package startlog logs, once per loaded config, the layer4 listeners and
// how many routes each has, at info level: caddy-l4 itself logs its
// listeners only at debug level, and an operator starting Caddy should see
// where it listens.
package startlog

import (
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/mholt/caddy-l4/layer4"
	"go.uber.org/zap"
)

var logged sync.Map // context.Context of a config -> struct{}

// Listeners logs the listeners of the config ctx belongs to, once, half a
// second after the first call: by then the config is running (or was
// replaced, and is not logged).
func Listeners(ctx caddy.Context) {
	key := ctx.Context
	if _, dup := logged.LoadOrStore(key, struct{}{}); dup {
		return
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		defer logged.Delete(key)
		active := caddy.ActiveContext()
		if active.Context != key {
			return
		}
		app, err := active.AppIfConfigured("layer4")
		if err != nil {
			return
		}
		l4, ok := app.(*layer4.App)
		if !ok {
			return
		}
		log := caddy.Log().Named("layer4.prelude")
		names := make([]string, 0, len(l4.Servers))
		for name := range l4.Servers {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			s := l4.Servers[name]
			log.Info("layer4 listener", zap.String("server", name), zap.Strings("listen", s.Listen), zap.Int("routes", len(s.Routes)))
		}
	}()
}
