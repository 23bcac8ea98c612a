// Package endpoint handles Vigil's endpoint strings: "http://HOST:PORT" or
// "unix:///PATH". Servers listen on them; clients reach them over HTTP.
package endpoint

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Endpoint is one parsed endpoint.
type Endpoint struct {
	// Network is "tcp" or "unix"; Address is host:port or a socket path.
	Network, Address string
}

// Parse reads "http://HOST:PORT", "HOST:PORT" or "unix:///PATH".
func Parse(s string) (Endpoint, error) {
	s = strings.TrimSpace(s)
	switch {
	case strings.HasPrefix(s, "unix://"):
		p := strings.TrimPrefix(s, "unix://")
		if !filepath.IsAbs(p) {
			return Endpoint{}, fmt.Errorf("endpoint %q: a unix socket needs an absolute path, e.g. unix:///run/vigil/api.sock", s)
		}
		return Endpoint{"unix", p}, nil
	case strings.HasPrefix(s, "https://"):
		return Endpoint{}, fmt.Errorf("endpoint %q: https is not supported yet", s)
	default:
		hp := strings.TrimSuffix(strings.TrimPrefix(s, "http://"), "/")
		if _, _, err := net.SplitHostPort(hp); err != nil {
			return Endpoint{}, fmt.Errorf("endpoint %q: want http://HOST:PORT or unix:///PATH", s)
		}
		return Endpoint{"tcp", hp}, nil
	}
}

// ParseList reads a comma-separated list of endpoints.
func ParseList(s string) ([]Endpoint, error) {
	var out []Endpoint
	for _, part := range strings.Split(s, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		e, err := Parse(part)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no endpoint in %q", s)
	}
	return out, nil
}

// String renders the endpoint in the form Parse reads.
func (e Endpoint) String() string {
	if e.Network == "unix" {
		return "unix://" + e.Address
	}
	return "http://" + e.Address
}

// Listen opens a listener on the endpoint; a stale unix socket is removed.
func (e Endpoint) Listen() (net.Listener, error) {
	if e.Network == "unix" {
		if err := os.MkdirAll(filepath.Dir(e.Address), 0o755); err != nil {
			return nil, fmt.Errorf("listen %s: %w", e, err)
		}
		_ = os.Remove(e.Address)
	}
	ln, err := net.Listen(e.Network, e.Address)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", e, err)
	}
	return ln, nil
}

// Client returns an HTTP client whose requests to BaseURL reach e.
func (e Endpoint) Client(timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 3 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, e.Network, e.Address)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// BaseURL is the URL prefix for requests through Client.
func (e Endpoint) BaseURL() string {
	if e.Network == "unix" {
		return "http://unix"
	}
	return "http://" + e.Address
}
