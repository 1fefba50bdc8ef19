package preludeadmin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// captures serves POST (start) and GET (list) on /prelude/amqp/captures.
func captures(w http.ResponseWriter, r *http.Request) error {
	switch r.Method {
	case http.MethodGet:
		return writeJSON(w, http.StatusOK, l4amqp.Captures())
	case http.MethodPost:
		var c l4amqp.Capture
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return apiErr(http.StatusBadRequest, "capture: %v", err)
		}
		id, err := l4amqp.StartCapture(c, "api", false)
		if err != nil {
			return apiErr(http.StatusBadRequest, "capture: %v", err)
		}
		return writeJSON(w, http.StatusCreated, map[string]string{"id": id})
	}
	return apiErr(http.StatusMethodNotAllowed, "method %s not allowed; use GET or POST", r.Method)
}

// traceFilter reads a capture filter from query parameters.
func traceFilter(r *http.Request) (l4amqp.Filter, l4amqp.BodyPolicy, error) {
	q := r.URL.Query()
	f := l4amqp.Filter{VHost: q.Get("vhost"), User: q.Get("user"), Client: q.Get("client"),
		ConnectionName: q.Get("connection_name"), Exchange: q.Get("exchange"),
		RoutingKey: q.Get("routing_key"), Queue: q.Get("queue")}
	if s := q.Get("session"); s != "" {
		id, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return f, 0, fmt.Errorf("session: %q is not a session id", s)
		}
		f.Session = id
	}
	body, err := l4amqp.ParseBodyPolicy(q.Get("body"))
	if q.Get("body") == "" {
		body = 0 // a trace shows no bodies unless asked
	}
	return f, body, err
}

// trace streams NDJSON lines until the client leaves. Lines the reader is
// too slow for are dropped and reported in a "dropped" line.
func trace(w http.ResponseWriter, r *http.Request) error {
	f, body, err := traceFilter(r)
	if err != nil {
		return apiErr(http.StatusBadRequest, "trace: %v", err)
	}
	t, err := l4amqp.StartTrace(f, body)
	if err != nil {
		return apiErr(http.StatusBadRequest, "trace: %v", err)
	}
	defer t.Stop()
	// Caddy wraps the writer; the controller reaches its Flush through Unwrap.
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var batch bytes.Buffer
	for {
		select {
		case <-r.Context().Done():
			return nil
		case line := <-t.Lines():
			t.Took(line)
			batch.Write(line)
			for more := true; more && batch.Len() < 64<<10; {
				select {
				case l := <-t.Lines():
					t.Took(l)
					batch.Write(l)
				default:
					more = false
				}
			}
		case <-tick.C:
		}
		if n := t.TakeDropped(); n > 0 {
			fmt.Fprintf(&batch, "{\"time\":%q,\"event\":\"dropped\",\"lines\":%d}\n", time.Now().UTC().Format(time.RFC3339Nano), n)
		}
		if batch.Len() == 0 {
			continue
		}
		if _, err := w.Write(batch.Bytes()); err != nil {
			return nil
		}
		batch.Reset()
		if err := rc.Flush(); err != nil {
			return nil
		}
	}
}
