package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/store"
)

// Access control: every request is identified once (identify), and each
// route names the least role that may call it (need). A bearer token is
// an identity wherever it comes from, and wins over the socket's
// credentials; without one, root on the local unix socket is admin (its
// peer credentials come from the kernel), and anyone else is refused. No
// TCP listener, loopback included, serves anyone without a token.

type callerKey struct{}

// caller is who a request authenticated as, or why it did not.
type caller struct {
	id  auth.Identity
	err error
}

func callerOf(r *http.Request) *caller {
	c, _ := r.Context().Value(callerKey{}).(*caller)
	return c
}

// identify works out the identity of each request.
func (s *Server) identify(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &caller{}
		bearer, err := auth.FromHeader(r.Header.Get("Authorization"))
		switch {
		case err != nil:
			c.err = err
		case bearer != "":
			c.id, c.err = auth.Bearer(r.Context(), bearer, s.st.LookupToken, time.Now())
		case pki.PeerHost(r.TLS) != "":
			// A cluster host's certificate: it reads, as a viewer does, and
			// writes what it reports about the VMs placed on it (hostwrites.go).
			h := pki.PeerHost(r.TLS)
			c.id = auth.Identity{Name: "host " + h, Role: auth.Viewer, Via: "host certificate", Host: h}
		case peerOfRequest(r).root:
			c.id = auth.Identity{Name: "root", Role: auth.Admin, Via: "unix socket uid 0"}
		default:
			c.err = errors.New("no credentials: send an API token (Authorization: Bearer …; an admin makes one with `vigil token create`), or call the local unix socket as root")
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
	})
}

// unauthenticated answers a caller that did not authenticate: 401, with
// why.
func unauthenticated(w http.ResponseWriter, c *caller) {
	why := errors.New("no credentials")
	if c != nil && c.err != nil {
		why = c.err
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
	writeErr(w, http.StatusUnauthorized, fmt.Errorf("unauthenticated: %w", why))
}

// need lets a request through if its caller holds role: 401 when it is
// not authenticated, 403 when its role is not enough. Both errors start
// with the cause's name, which scripts and the CLI show.
func (s *Server) need(role auth.Role, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := callerOf(r)
		switch {
		case c == nil || c.err != nil:
			unauthenticated(w, c)
		case !c.id.Role.Allows(role):
			writeErr(w, http.StatusForbidden, fmt.Errorf("forbidden: %s has the %s role; %s %s needs %s", c.id.Name, c.id.Role, r.Method, r.URL.Path, role))
		default:
			h(w, r)
		}
	}
}

// createToken makes an API token and answers its secret, once.
func (s *Server) createToken(w http.ResponseWriter, r *http.Request) {
	var req v1.TokenRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("token request: %w", err))
		return
	}
	var role auth.Role
	var err error
	switch {
	case req.Join && req.Role != "":
		writeErr(w, http.StatusBadRequest, errors.New("a join token has no role: it admits a host once"))
		return
	case req.Join:
	default:
		if role, err = auth.ParseRole(req.Role); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
	}
	var ttl time.Duration
	if req.Expires != "" {
		if ttl, err = time.ParseDuration(req.Expires); err != nil || ttl <= 0 {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("expires %q: want a positive duration such as 15m, 24h or 2160h", req.Expires))
			return
		}
	}
	var t *auth.Token
	var bearer string
	if req.Join {
		var secret string
		t, secret, err = auth.NewJoin(req.Name, req.Server, time.Now(), ttl, actorOf(r))
		if err == nil {
			bearer, err = s.joinTicket(t, secret)
		}
	} else {
		t, bearer, err = auth.New(req.Name, role, time.Now(), ttl, actorOf(r))
	}
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	if err := s.st.CreateToken(r.Context(), t); err != nil {
		code := statusFor(err)
		if errors.Is(err, store.ErrExists) {
			code = http.StatusConflict
		}
		writeErr(w, code, err)
		return
	}
	httpjson.WriteIndented(w, http.StatusCreated, v1.NewToken{Token: bearer, Info: tokenView(t, time.Now())})
}

func (s *Server) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := s.st.Tokens(r.Context())
	if err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	now := time.Now()
	out := []v1.TokenInfo{}
	for _, t := range ts {
		out = append(out, tokenView(t, now))
	}
	slices.SortFunc(out, func(a, b v1.TokenInfo) int { return strings.Compare(a.Name, b.Name) })
	httpjson.WriteIndented(w, http.StatusOK, out)
}

func (s *Server) revokeToken(w http.ResponseWriter, r *http.Request) {
	t, err := s.st.RevokeToken(r.Context(), r.PathValue("name"), time.Now())
	if err != nil {
		writeErr(w, statusFor(err), err)
		return
	}
	httpjson.WriteIndented(w, http.StatusOK, tokenView(t, time.Now()))
}

func tokenView(t *auth.Token, now time.Time) v1.TokenInfo {
	role := string(t.Role)
	if t.Kind == auth.KindJoin {
		role = "join"
		if t.Server {
			role = "join-server"
		}
	}
	return v1.TokenInfo{Name: t.Name, Role: role, State: t.State(now), CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy,
		ExpiresAt: t.ExpiresAt, RevokedAt: t.RevokedAt, UsedBy: t.UsedBy, UsedAt: t.UsedAt}
}

// whoami answers who the caller is, with its role.
func (s *Server) whoami(w http.ResponseWriter, r *http.Request) {
	c := callerOf(r)
	httpjson.WriteIndented(w, http.StatusOK, v1.WhoAmI{Name: c.id.Name, Role: string(c.id.Role), Via: c.id.Via})
}
