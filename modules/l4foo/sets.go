package l4foo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/caddyprelude/prelude/foo"
	"github.com/caddyprelude/prelude/modules/farm"
)

// Set is one named stats set: the counters of every handler configured with
// the same `stats` name, kept across config reloads, saved to its recovery
// file at least once a second and restored at start.
type Set struct {
	Name  string
	Stats *foo.Stats

	path   string
	logger *zap.Logger
	stop   chan struct{}
	done   chan struct{}

	mu    sync.Mutex
	farms map[*farm.Farm]bool
}

var sets = caddy.NewUsagePool()

func setKey(name string) string { return "prelude.foo.stats/" + name }

// DefaultRecoveryPath is where a set is saved unless `recovery` says
// otherwise: under Caddy's data directory.
func DefaultRecoveryPath(name string) string {
	return filepath.Join(caddy.AppDataDir(), "prelude", "foo-"+name+".json")
}

// acquireSet returns the named set, creating and restoring it if this is
// its first user in the process. Release it with releaseSet.
func acquireSet(name, path string, logger *zap.Logger) (*Set, error) {
	v, _, err := sets.LoadOrNew(setKey(name), func() (caddy.Destructor, error) {
		s := &Set{Name: name, Stats: foo.NewStats(nil), path: path, logger: logger,
			stop: make(chan struct{}), done: make(chan struct{}), farms: map[*farm.Farm]bool{}}
		s.restore()
		go s.saveLoop()
		return s, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*Set), nil
}

func releaseSet(name string) { _, _ = sets.Delete(setKey(name)) }

// Destruct stops the save loop after a last save.
func (s *Set) Destruct() error {
	close(s.stop)
	<-s.done
	return nil
}

// restore loads the recovery file. A missing file is a fresh start; a
// corrupt or truncated one is logged and ignored.
func (s *Set) restore() {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err == nil {
		var sn foo.Snapshot
		if sn, err = foo.UnmarshalSnapshot(b); err == nil {
			s.Stats.Restore(sn)
			s.logger.Info("foo stats restored", zap.String("stats", s.Name), zap.String("file", s.path),
				zap.Uint64("msg_req", sn.Req), zap.Time("saved_at", sn.SavedAt))
			return
		}
	}
	s.logger.Error("ignoring foo recovery file", zap.String("stats", s.Name), zap.String("file", s.path), zap.Error(err))
}

// saveInterval is how often a set is saved: twice the rate the issue asks
// for, so that one save may take as long again.
const saveInterval = 500 * time.Millisecond

// saveLoop writes the snapshot every saveInterval (so at least once a
// second) until Destruct, then once more. A save waits for the disk
// (fsync); one slower than saveInterval delays the next and is logged, as
// a crash then loses more than a second's worth.
func (s *Set) saveLoop() {
	defer close(s.done)
	t := time.NewTicker(saveInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.save()
		case <-s.stop:
			s.save()
			return
		}
	}
}

func (s *Set) save() {
	start := time.Now()
	b, err := foo.MarshalSnapshot(s.Stats.Snapshot())
	if err == nil {
		err = writeFileAtomic(s.path, b)
	}
	if took := time.Since(start); took > saveInterval {
		s.logger.Warn("slow foo stats save: the disk took longer than the save interval", zap.String("stats", s.Name),
			zap.String("file", s.path), zap.Duration("took", took), zap.Duration("interval", saveInterval))
	}
	if err != nil {
		s.logger.Error("saving foo stats", zap.String("stats", s.Name), zap.String("file", s.path), zap.Error(err))
	}
}

// writeFileAtomic writes b to a temporary file in path's directory, syncs
// it, renames it over path and syncs the directory: a crash leaves either
// the old file or the new one, never a torn one.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

func (s *Set) addFarm(f *farm.Farm) {
	s.mu.Lock()
	s.farms[f] = true
	s.mu.Unlock()
}

func (s *Set) removeFarm(f *farm.Farm) {
	s.mu.Lock()
	delete(s.farms, f)
	s.mu.Unlock()
}

// Health reports nil when at least one member of the set's farms accepts a
// TCP connection, else why not.
func (s *Set) Health(ctx context.Context) error {
	s.mu.Lock()
	farms := make([]*farm.Farm, 0, len(s.farms))
	for f := range s.farms {
		farms = append(farms, f)
	}
	s.mu.Unlock()
	var reasons []string
	for _, f := range farms {
		members, errs := f.Members(ctx)
		reasons = append(reasons, errs...)
		for _, m := range members {
			d := net.Dialer{Timeout: time.Second}
			c, err := d.DialContext(ctx, "tcp", m.Addr)
			if err == nil {
				_ = c.Close()
				return nil
			}
			reasons = append(reasons, m.Addr+": "+err.Error())
		}
	}
	if len(reasons) == 0 {
		return errors.New("no upstream configured")
	}
	return fmt.Errorf("no upstream reachable: %v", reasons)
}

// LookupSet returns the named set, if a loaded config uses it.
func LookupSet(name string) (*Set, bool) {
	var found *Set
	sets.Range(func(k, v any) bool {
		if k == setKey(name) {
			found = v.(*Set)
			return false
		}
		return true
	})
	return found, found != nil
}

// AllSets returns the sets in use, by name.
func AllSets() []*Set {
	var out []*Set
	sets.Range(func(_, v any) bool {
		out = append(out, v.(*Set))
		return true
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
