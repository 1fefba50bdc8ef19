package lookup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis reads a key's route from Redis: the string at prefix+key, or the
// field key of one hash. The value is an answer (ParseAnswer): an address
// list or a JSON object. A missing key or field is "no such key".
//
// Changes reach a Cache through Redis keyspace notifications (Watch): the
// server must publish them for the keys read (notify-keyspace-events with
// K and the g, $, h and x classes, or KA); NotificationsOn checks.
type Redis struct {
	client   *redis.Client
	prefix   string
	hash     string
	db       int
	redacted string
}

// NewRedis connects lazily to the server of rawURL
// (redis://[user:password@]host:port[/db], or rediss:// for TLS).
func NewRedis(rawURL, prefix, hash string) (*Redis, error) {
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("lookup redis: the URL does not parse (want redis://[user:password@]host:port[/db])")
	}
	opts.ContextTimeoutEnabled = true // a fetch's deadline bounds its reads and writes
	opts.MaxRetries = 1               // one retry on a fresh connection after a server restart
	opts.DisableIdentity = true       // no CLIENT SETINFO: older servers log it as unknown
	opts.PoolSize = 32
	r := &Redis{client: redis.NewClient(opts), prefix: prefix, hash: hash, db: opts.DB}
	r.redacted = "redis://" + opts.Addr
	if opts.DB != 0 {
		r.redacted += fmt.Sprintf("/%d", opts.DB)
	}
	return r, nil
}

// String names the server without its password.
func (r *Redis) String() string { return r.redacted }

// Close closes the connections.
func (r *Redis) Close() error { return r.client.Close() }

// Fetch is the Fetch of a Redis source.
func (r *Redis) Fetch(ctx context.Context, key string) (Answer, bool, error) {
	var v string
	var err error
	if r.hash != "" {
		v, err = r.client.HGet(ctx, r.hash, key).Result()
	} else {
		v, err = r.client.Get(ctx, r.prefix+key).Result()
	}
	switch {
	case errors.Is(err, redis.Nil):
		return Answer{}, false, nil
	case err != nil:
		return Answer{}, false, fmt.Errorf("lookup redis: %w", err)
	}
	ans, err := ParseAnswer([]byte(v))
	if err != nil {
		return Answer{}, false, fmt.Errorf("lookup redis: %w", err)
	}
	return ans, true, nil
}

// NotificationsOn reports whether the server publishes the keyspace
// events Watch needs. An error means it could not tell (CONFIG may be
// disabled on a managed server).
func (r *Redis) NotificationsOn(ctx context.Context) (bool, error) {
	v, err := r.client.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return false, err
	}
	flags := v["notify-keyspace-events"]
	if !strings.Contains(flags, "K") {
		return false, nil
	}
	if strings.Contains(flags, "A") {
		return true, nil
	}
	need := "g$x"
	if r.hash != "" {
		need = "ghx"
	}
	for _, c := range need {
		if !strings.ContainsRune(flags, c) {
			return false, nil
		}
	}
	return true, nil
}

// Watch invalidates c's answers as their keys change in Redis, until ctx
// ends: a change to prefix+key invalidates key; any change to the hash
// flushes c (the notification does not name the field). Every
// (re)subscription flushes c too, since changes made while the
// subscription was down were not seen. report, if not nil, is told of
// each subscription and each error.
func (r *Redis) Watch(ctx context.Context, c *Cache, report func(subscribed bool, err error)) {
	channel := fmt.Sprintf("__keyspace@%d__:", r.db)
	var ps *redis.PubSub
	if r.hash != "" {
		ps = r.client.Subscribe(ctx, channel+r.hash)
	} else {
		ps = r.client.PSubscribe(ctx, channel+globEscape(r.prefix)+"*")
	}
	defer ps.Close()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, 15*time.Second)
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &ne) && ne.Timeout():
			err = ps.Ping(ctx) // quiet: check the subscription is still there
		}
		if err != nil {
			if report != nil {
				report(false, err)
			}
			sleep(ctx, backoff)
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			backoff = 100 * time.Millisecond
			c.Flush()
			if report != nil {
				report(true, nil)
			}
		case *redis.Message:
			if r.hash != "" {
				c.Flush()
			} else {
				c.Invalidate(strings.TrimPrefix(m.Channel, channel+r.prefix))
			}
		}
	}
}

// globEscape quotes the characters Redis's PSUBSCRIBE patterns treat
// specially.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
