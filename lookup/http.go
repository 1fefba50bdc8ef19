package lookup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// HTTP asks a web service for a key's route: GET the URL with {key}
// replaced by the key (escaped for where it stands: a path segment, or a
// query value). 200 with an answer (ParseAnswer) is the route or a
// refusal; 404 is "no such key"; anything else is an error.
type HTTP struct {
	template   string
	inQuery    bool
	redacted   string
	client     *http.Client
	authHeader string
}

// NewHTTP checks the URL template: http or https, with a host and {key}.
func NewHTTP(template string, client *http.Client) (*HTTP, error) {
	u, err := url.Parse(strings.ReplaceAll(template, "{key}", "KEY"))
	if err != nil {
		return nil, fmt.Errorf("lookup http: the URL does not parse: %v", redactErr(err))
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("lookup http: the URL must be http:// or https://")
	case u.Host == "":
		return nil, errors.New("lookup http: the URL has no host")
	case !strings.Contains(template, "{key}"):
		return nil, errors.New("lookup http: the URL must hold {key}, where the key goes")
	}
	q := strings.Index(template, "?")
	h := &HTTP{
		template: template,
		inQuery:  q >= 0 && strings.Index(template, "{key}") > q,
		redacted: strings.ReplaceAll(u.Redacted(), "KEY", "{key}"),
		client:   client,
	}
	if u.User != nil { // sent as basic auth, kept out of the URL we log
		h.template = strings.Replace(template, u.User.String()+"@", "", 1)
		p, _ := u.User.Password()
		req, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		req.SetBasicAuth(u.User.Username(), p)
		h.authHeader = req.Header.Get("Authorization")
	}
	return h, nil
}

// String is the URL template with any password hidden.
func (h *HTTP) String() string { return h.redacted }

// Fetch is the Fetch of an HTTP source.
func (h *HTTP) Fetch(ctx context.Context, key string) (Answer, bool, error) {
	esc := url.PathEscape(key)
	if h.inQuery {
		esc = url.QueryEscape(key)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.ReplaceAll(h.template, "{key}", esc), nil)
	if err != nil {
		return Answer{}, false, fmt.Errorf("lookup http: %v", redactErr(err))
	}
	req.Header.Set("Accept", "application/json")
	if h.authHeader != "" {
		req.Header.Set("Authorization", h.authHeader)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return Answer{}, false, fmt.Errorf("lookup http: %v", redactErr(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerLen+1))
	switch {
	case err != nil:
		return Answer{}, false, fmt.Errorf("lookup http: reading the answer: %v", redactErr(err))
	case resp.StatusCode == http.StatusNotFound:
		return Answer{}, false, nil
	case resp.StatusCode != http.StatusOK:
		return Answer{}, false, fmt.Errorf("lookup http: the service answered %s", resp.Status)
	}
	ans, err := ParseAnswer(body)
	if err != nil {
		return Answer{}, false, fmt.Errorf("lookup http: %w", err)
	}
	return ans, true, nil
}

// redactErr drops the URL from a net/http error: it would name the
// service's host and path, and the URL is what the operator configured
// (String shows it with its password hidden).
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
