package preludeadmin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddyprelude/prelude/modules/l4amqp"
)

// amqpAPI serves the AMQP control plane under /prelude/amqp/:
//
//	GET    /prelude/amqp/sessions[?vhost=]
//	DELETE /prelude/amqp/sessions/{id}[?graceful=1]
//	DELETE /prelude/amqp/vhosts/{vhost}/sessions[?graceful=1]
//	POST   /prelude/amqp/vhosts/{vhost}/pause
//	POST   /prelude/amqp/vhosts/{vhost}/resume
//	GET    /prelude/amqp/vhosts (paused vhosts)
//	GET    /prelude/amqp/stats
//	GET    /prelude/amqp/pools                 pooled broker connections, their channels and clients
//	GET    /prelude/amqp/sessions/{id}        one session with its channels
//	POST   /prelude/amqp/captures              start a capture (JSON body) -> 201 {"id"}
//	GET    /prelude/amqp/captures              list captures with their counters
//	DELETE /prelude/amqp/captures/{id}         stop one; its file is complete
//	GET    /prelude/amqp/trace[?filter keys]   NDJSON until the reader leaves
//
// A vhost in the path is URL-escaped: "/" is %2F.
func (Admin) amqpAPI(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/prelude/amqp/")
	parts := strings.Split(strings.TrimSuffix(rest, "/"), "/")
	for i, p := range parts {
		u, err := url.PathUnescape(p)
		if err != nil {
			return apiErr(http.StatusBadRequest, "bad path segment %q", p)
		}
		parts[i] = u
	}
	graceful := r.URL.Query().Get("graceful") == "1"
	switch {
	case len(parts) == 1 && parts[0] == "sessions":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, l4amqp.Sessions(r.URL.Query().Get("vhost")))
	case len(parts) == 2 && parts[0] == "sessions" && r.Method == http.MethodGet:
		id, err := strconv.ParseUint(parts[1], 10, 64)
		d, ok := l4amqp.SessionByID(id)
		if err != nil || !ok {
			return apiErr(http.StatusNotFound, "no live session %q", parts[1])
		}
		return writeJSON(w, http.StatusOK, d)
	case len(parts) == 1 && parts[0] == "pools":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, l4amqp.Pools())
	case len(parts) == 1 && parts[0] == "captures":
		return captures(w, r)
	case len(parts) == 2 && parts[0] == "captures":
		if err := method(r, http.MethodDelete); err != nil {
			return err
		}
		info, ok := l4amqp.StopCapture(parts[1])
		if !ok {
			return apiErr(http.StatusNotFound, "no capture %q", parts[1])
		}
		return writeJSON(w, http.StatusOK, info)
	case len(parts) == 1 && parts[0] == "trace":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		return trace(w, r)
	case len(parts) == 2 && parts[0] == "sessions":
		if err := method(r, http.MethodDelete); err != nil {
			return err
		}
		id, err := strconv.ParseUint(parts[1], 10, 64)
		if err != nil || !l4amqp.SeverSession(id, graceful) {
			return apiErr(http.StatusNotFound, "no live session %q", parts[1])
		}
		return writeJSON(w, http.StatusOK, map[string]any{"severed": 1, "graceful": graceful})
	case len(parts) == 1 && parts[0] == "stats":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, l4amqp.StatsSnapshot())
	case len(parts) == 1 && parts[0] == "vhosts":
		if err := method(r, http.MethodGet); err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, map[string]any{"paused": l4amqp.PausedVHosts(), "held": l4amqp.HeldClients()})
	case len(parts) == 3 && parts[0] == "vhosts":
		vhost := parts[1]
		switch parts[2] {
		case "sessions":
			if err := method(r, http.MethodDelete); err != nil {
				return err
			}
			n := l4amqp.SeverVHost(vhost, graceful)
			return writeJSON(w, http.StatusOK, map[string]any{"vhost": vhost, "severed": n, "graceful": graceful})
		case "pause":
			if err := method(r, http.MethodPost); err != nil {
				return err
			}
			routes, meant := l4amqp.VHostRoute(vhost)
			if len(routes) == 0 {
				msg := fmt.Sprintf("no route serves vhost %q, so none of its clients could be held; the routes are %s", vhost, strings.Join(quoted(l4amqp.RouteLabels()), ", "))
				if meant != "" {
					msg += fmt.Sprintf("; did you mean %q? A vhost in the path is URL-escaped: %s", meant, url.PathEscape(meant))
				}
				return apiErr(http.StatusNotFound, "%s", msg)
			}
			changed := l4amqp.PauseVHost(vhost)
			out := map[string]any{"vhost": vhost, "paused": true, "changed": changed, "routes": routes}
			if meant != "" {
				out["warning"] = fmt.Sprintf("vhost %q reaches only a default farm, and %q has a vhost block of its own: did you mean %s?", vhost, meant, url.PathEscape(meant))
			}
			return writeJSON(w, http.StatusOK, out)
		case "resume":
			if err := method(r, http.MethodPost); err != nil {
				return err
			}
			changed := l4amqp.ResumeVHost(vhost)
			return writeJSON(w, http.StatusOK, map[string]any{"vhost": vhost, "paused": false, "changed": changed})
		}
	}
	return apiErr(http.StatusNotFound, "no such endpoint: %s", r.URL.Path)
}

func quoted(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = strconv.Quote(s)
	}
	return out
}

func method(r *http.Request, want string) error {
	if r.Method != want {
		return apiErr(http.StatusMethodNotAllowed, "method %s not allowed; use %s", r.Method, want)
	}
	return nil
}

func apiErr(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(v)
}
