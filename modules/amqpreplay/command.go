// Package amqpreplay is the `caddy amqp-replay` command: it replays the
// client side of sessions an amqp handler captured (NDJSON or pcapng)
// against a broker and reports where the broker answered differently.
package amqpreplay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/caddyprelude/prelude/amqp/replay"
)

func init() {
	fs := flag.NewFlagSet("amqp-replay", flag.ExitOnError)
	fs.String("target", "", "the broker: amqp://[user:pass@]host:port[/vhost] or amqps://...")
	fs.String("user", "", "user to log in as (default: the URL's, or $AMQP_REPLAY_USER)")
	fs.String("password", "", "password (default: the URL's, or $AMQP_REPLAY_PASSWORD)")
	fs.Float64("speed", 0, "replay at the captured pace times this (0: as fast as possible)")
	fs.String("session", "", "comma-separated session ids to replay (default: all)")
	fs.Duration("wait", 10*time.Second, "how long to wait for each reply or delivery")
	fs.String("ca", "", "PEM file of the CA that signs an amqps target's certificate")
	fs.String("tls-server-name", "", "name to verify an amqps target's certificate against (default: the URL's host)")
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "amqp-replay",
		Usage: "--target <amqp-url> [--speed <n>] [--session <ids>] [--user <u>] [--password <p>] <capture-file>",
		Short: "Replays captured AMQP sessions against a broker and reports the differences",
		Long: `
Reads a capture the amqp handler wrote (NDJSON or pcapng), replays the client
side of each selected session against the target broker and compares the
broker's answers with the captured ones: every synchronous reply (with the
reply code of a Close) and the messages delivered, confirmed and returned.
Server-named queues, consumer tags, delivery tags and direct reply-to names
(amq.rabbitmq.reply-to.…) are mapped to the new ones.

Captures hold no credentials: give them in the target URL, with --user and
--password, or in $AMQP_REPLAY_USER and $AMQP_REPLAY_PASSWORD. In a pcapng
capture, sessions are numbered in the order they start.

Exit status: 0 when the broker answered as captured, 1 when it did not (the
report says where), 2 when the replay could not run.`,
		Flags: fs,
		Func:  run,
	})
}

func run(fl caddycmd.Flags) (int, error) {
	file := fl.Arg(0)
	if file == "" || fl.NArg() > 1 {
		return 2, errors.New("give exactly one capture file")
	}
	target, err := parseTarget(fl.String("target"), fl.String("user"), fl.String("password"), fl.String("ca"), fl.String("tls-server-name"))
	if err != nil {
		return 2, err
	}
	ids, err := parseIDs(fl.String("session"))
	if err != nil {
		return 2, err
	}
	sessions, err := readCapture(file)
	if err != nil {
		return 2, err
	}
	if sessions, err = replay.Select(sessions, ids); err != nil {
		return 2, fmt.Errorf("%s: %v", file, err)
	}
	if len(sessions) == 0 {
		return 2, fmt.Errorf("%s: no session to replay", file)
	}
	opts := replay.Options{Speed: fl.Float64("speed"), Wait: fl.Duration("wait")}
	differed := 0
	for _, s := range sessions {
		r, err := replay.Replay(context.Background(), s, target, opts)
		if err != nil {
			return 2, fmt.Errorf("session %d: %v", s.ID, err)
		}
		printReport(os.Stdout, r)
		if len(r.Differences) > 0 {
			differed++
		}
	}
	if differed > 0 {
		return 1, fmt.Errorf("the broker answered differently in %d of %d sessions", differed, len(sessions))
	}
	return 0, nil
}

func printReport(w io.Writer, r *replay.Report) {
	fmt.Fprintf(w, "session %d (vhost %s): %d client frames sent, %d skipped", r.Session, r.VHost, r.Sent, r.Skipped)
	if len(r.Differences) == 0 {
		fmt.Fprintln(w, ": the broker answered as captured")
	} else {
		fmt.Fprintf(w, ": %d differences\n", len(r.Differences))
	}
	for _, d := range r.Differences {
		fmt.Fprintf(w, "  differs: %s\n", d)
	}
	for _, n := range dedupe(r.Notes) {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}

func dedupe(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// readCapture reads a pcapng (by its magic number) or NDJSON capture.
func readCapture(file string) ([]*replay.Session, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, _ := br.Peek(4)
	if bytes.Equal(magic, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		return readPCAPNG(br, file)
	}
	return replay.ReadNDJSON(br, file)
}

func parseIDs(s string) ([]uint64, error) {
	var ids []uint64
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		id, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("--session: %q is not a session id", f)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// parseTarget reads the target URL. Errors never quote the URL: it may
// hold a password.
func parseTarget(raw, user, password, caFile, serverName string) (replay.Target, error) {
	var t replay.Target
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") || u.Host == "" {
		return t, errors.New("--target: want amqp://host:port/ or amqps://host:port/")
	}
	t.User, t.Password = u.User.Username(), ""
	if p, ok := u.User.Password(); ok {
		t.Password = p
	}
	for _, v := range []struct {
		dst       *string
		flag, env string
	}{{&t.User, user, "AMQP_REPLAY_USER"}, {&t.Password, password, "AMQP_REPLAY_PASSWORD"}} {
		switch {
		case v.flag != "":
			*v.dst = v.flag
		case *v.dst == "":
			*v.dst = os.Getenv(v.env)
		}
	}
	if t.User == "" {
		return t, errors.New("no user: give one in --target, --user or $AMQP_REPLAY_USER")
	}
	if p := strings.TrimPrefix(u.Path, "/"); p != "" {
		t.VHost, _ = url.PathUnescape(p)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), map[string]string{"amqp": "5672", "amqps": "5671"}[u.Scheme])
	}
	var cfg *tls.Config
	if u.Scheme == "amqps" {
		cfg = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
		if serverName != "" {
			cfg.ServerName = serverName
		}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return t, fmt.Errorf("--ca: %v", err)
			}
			cfg.RootCAs = x509.NewCertPool()
			if !cfg.RootCAs.AppendCertsFromPEM(pem) {
				return t, fmt.Errorf("--ca: %s holds no PEM certificate", caFile)
			}
		}
	}
	t.Dial = func(ctx context.Context) (net.Conn, error) {
		d := &net.Dialer{Timeout: 10 * time.Second}
		if cfg != nil {
			return (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(ctx, "tcp", host)
		}
		return d.DialContext(ctx, "tcp", host)
	}
	return t, nil
}
