// Package endpoint handles Vigil's endpoint strings: "https://HOST:PORT",
// "http://HOST:PORT" or "unix:///PATH". Servers listen on them; clients
// reach them over HTTP (TLS for https).
package endpoint

import (
	"context"
	"crypto/tls"
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
	// TLS: an https endpoint.
	TLS bool
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
		return Endpoint{Network: "unix", Address: p}, nil
	case strings.HasPrefix(s, "https://"):
		hp := strings.TrimSuffix(strings.TrimPrefix(s, "https://"), "/")
		if _, _, err := net.SplitHostPort(hp); err != nil {
			return Endpoint{}, fmt.Errorf("endpoint %q: want https://HOST:PORT", s)
		}
		return Endpoint{Network: "tcp", Address: hp, TLS: true}, nil
	default:
		hp := strings.TrimSuffix(strings.TrimPrefix(s, "http://"), "/")
		if _, _, err := net.SplitHostPort(hp); err != nil {
			return Endpoint{}, fmt.Errorf("endpoint %q: want https://HOST:PORT, http://HOST:PORT or unix:///PATH", s)
		}
		return Endpoint{Network: "tcp", Address: hp}, nil
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
	return e.scheme() + "://" + e.Address
}

func (e Endpoint) scheme() string {
	if e.TLS {
		return "https"
	}
	return "http"
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

// Client returns an HTTP client whose requests to BaseURL reach e; tc
// configures TLS for an https endpoint (nil: the system's roots).
func (e Endpoint) Client(timeout time.Duration, tc *tls.Config) *http.Client {
	d := &net.Dialer{Timeout: 3 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, e.Network, e.Address)
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		TLSClientConfig:     tc,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// BaseURL is the URL prefix for requests through Client.
func (e Endpoint) BaseURL() string {
	if e.Network == "unix" {
		return "http://unix"
	}
	return e.scheme() + "://" + e.Address
}
