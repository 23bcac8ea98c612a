package agent

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/pki"
)

// The agent's endpoint serves consoles, metrics and its peers' probes. On
// TCP it is https with the host's certificate, and a caller is either a
// cluster host (a verified client certificate: the leader scraping, a
// member relaying a console, a peer probing) or holds an API token whose
// role allows the call (Prometheus with a viewer token). On a unix socket
// the file's permissions decide, as for the API.

// guard lets r through if its caller may call a route that needs role.
func (a *Agent) guard(role auth.Role, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.allowed(r, role); err != nil {
			code := http.StatusUnauthorized
			if errors.Is(err, errForbidden) {
				code = http.StatusForbidden
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_, _ = fmt.Fprintf(w, "{\"error\":%q}\n", err.Error())
			return
		}
		h.ServeHTTP(w, r)
	})
}

var errForbidden = errors.New("forbidden")

func (a *Agent) allowed(r *http.Request, role auth.Role) error {
	bearer, err := auth.FromHeader(r.Header.Get("Authorization"))
	switch {
	case err != nil:
		return fmt.Errorf("unauthenticated: %w", err)
	case bearer != "":
		id, err := auth.Bearer(r.Context(), bearer, a.st.LookupToken, time.Now())
		if err != nil {
			return fmt.Errorf("unauthenticated: %w", err)
		}
		if !id.Role.Allows(role) {
			return fmt.Errorf("%w: %s has the %s role; %s %s needs %s", errForbidden, id.Name, id.Role, r.Method, r.URL.Path, role)
		}
		return nil
	case pki.PeerHost(r.TLS) != "":
		return nil
	case r.TLS == nil:
		return nil // the local unix socket
	}
	return errors.New("unauthenticated: no credentials: a cluster host's certificate or an API token (Authorization: Bearer …)")
}
