package l4foo

import (
	"encoding/json"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/caddyprelude/prelude/foo"
)

var signalOnce sync.Once

// startSignalDump makes SIGUSR2 write each stats set's JSON as one line to
// stdout. It adds a listener for the signal, so Caddy's own handling of
// SIGUSR2 is untouched, and it blocks on the channel instead of polling.
func startSignalDump() {
	signalOnce.Do(func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGUSR2)
		go func() {
			for range ch {
				dumpStats(os.Stdout)
			}
		}()
	})
}

// statsLine is the SIGUSR2 and admin JSON: the reference's fields plus the
// set's name.
type statsLine struct {
	Name string `json:"name"`
	foo.Report
}

func dumpStats(w *os.File) {
	enc := json.NewEncoder(w)
	for _, s := range AllSets() {
		_ = enc.Encode(statsLine{Name: s.Name, Report: s.Stats.Report()})
	}
}
