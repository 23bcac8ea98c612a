package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/httpjson"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// Membership grows the etcd cluster for hosts that join as servers.
type Membership interface {
	// AddLearner adds a non-voting etcd member name at peerURL and returns
	// the initial cluster ("name=peerURL,...") it must start with.
	AddLearner(ctx context.Context, name, peerURL string) (string, error)
}

// join admits a host with a join token: it checks the token and spends
// it, signs the host's certificate with the cluster CA, and for a server
// token adds the host's etcd member. The token's secret authenticates
// the call; a refusal says why and spends nothing.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	if n, ok := r.Context().Value(auditKey{}).(*auditNote); ok {
		n.secret = true
	}
	var req v1.JoinRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("join request: %w", err))
		return
	}
	if n, ok := r.Context().Value(auditKey{}).(*auditNote); ok {
		n.host = req.Host
	}
	if r.TLS == nil {
		// The response carries a certificate and maybe the CA key: never
		// over a plaintext link (the unix socket included: joins come from
		// other hosts).
		writeErr(w, http.StatusBadRequest, errors.New("join over https only"))
		return
	}
	if err := spec.ValidName(req.Host); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("host: %w", err))
		return
	}
	if req.Host == store.RootUser {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("host: %w", store.ErrReservedHostName))
		return
	}
	sub := pki.Subject{Host: req.Host}
	for _, a := range req.IPs {
		ip := net.ParseIP(a)
		if ip == nil {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("ips: %q is not an IP address", a))
			return
		}
		sub.IPs = append(sub.IPs, ip)
	}
	if s.member.Identity == nil {
		writeErr(w, http.StatusServiceUnavailable, errors.New("this member has no certificates: it cannot admit hosts"))
		return
	}
	ca, err := pki.LoadAuthority(s.member.Identity.Dir())
	if errors.Is(err, os.ErrNotExist) {
		writeErr(w, http.StatusServiceUnavailable, errors.New("this member does not hold the CA key: join through a control-plane member that does"))
		return
	}
	if err != nil {
		writeErr(w, http.StatusInternalServerError, err)
		return
	}
	now := time.Now()
	// Checked once before anything is signed or added, and again as the
	// token is spent: only one host gets it.
	check := func(t *auth.Token) error { return t.VerifyJoin(req.Secret, now) }
	tok, err := s.st.TokenByID(r.Context(), req.TokenID)
	if err != nil {
		writeErr(w, http.StatusUnauthorized, fmt.Errorf("unauthenticated: %w", auth.ErrUnknown))
		return
	}
	if err := check(tok); err != nil {
		writeErr(w, http.StatusUnauthorized, fmt.Errorf("unauthenticated: %w", err))
		return
	}
	if tok.Server && req.EtcdPeerURL == "" && !s.member.EtcdExternal {
		writeErr(w, http.StatusBadRequest, errors.New("a server join token needs the joining member's etcd peer URL"))
		return
	}
	if req.EtcdPeerURL != "" && !s.member.EtcdExternal {
		if u, err := url.Parse(req.EtcdPeerURL); err != nil || u.Scheme != "https" {
			writeErr(w, http.StatusBadRequest, fmt.Errorf("etcd peer URL %q: want https://IP:PORT", req.EtcdPeerURL))
			return
		}
	}
	cert, err := ca.SignCSR([]byte(req.CSR), sub, now, s.member.certLifetime())
	if err != nil {
		writeErr(w, http.StatusBadRequest, err)
		return
	}
	sca, err := pki.LoadStreamAuthority(s.member.Identity.Dir())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("this member does not hold the stream CA's key: %w", err))
		return
	}
	var streamCert []byte
	if req.StreamCSR != "" {
		if streamCert, err = sca.SignStreamCSR([]byte(req.StreamCSR), sub, now); err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
	}
	if _, err := s.st.UseJoinToken(r.Context(), req.TokenID, req.Host, now, check); err != nil {
		writeErr(w, http.StatusUnauthorized, fmt.Errorf("unauthenticated: %w", err))
		return
	}
	// The host's etcd user, named as its certificate is: a member's has the
	// root role, any other host's writes only its own keys (store.HostPermissions).
	if err := s.st.AdmitHost(r.Context(), req.Host, tok.Server); err != nil {
		writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("give %s its etcd access: %w (the join token is spent: make another)", req.Host, err))
		return
	}
	resp := v1.JoinResponse{CA: string(ca.PEM), Cert: string(cert), StreamCert: string(streamCert), StreamCA: string(sca.PEM), Server: tok.Server,
		APIs: s.member.APIs, EtcdExternal: s.member.EtcdExternal}
	if s.member.EtcdEndpoints != nil {
		if resp.EtcdEndpoints, err = s.member.EtcdEndpoints(r.Context()); err != nil {
			writeErr(w, http.StatusServiceUnavailable, err)
			return
		}
	}
	if tok.Server {
		if s.member.Members == nil && !s.member.EtcdExternal {
			writeErr(w, http.StatusServiceUnavailable, errors.New("this member cannot add etcd members"))
			return
		}
		kb, err := ca.KeyPEM()
		if err != nil {
			writeErr(w, http.StatusInternalServerError, err)
			return
		}
		resp.CAKey = string(kb)
		skb, err := sca.KeyPEM()
		if err != nil {
			writeErr(w, http.StatusInternalServerError, err)
			return
		}
		resp.StreamCAKey = string(skb)
		if !s.member.EtcdExternal {
			// Longer than a request's usual bound: etcd may make the add
			// wait for the previous member to settle (AddLearner).
			actx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 25*time.Second)
			defer cancel()
			if resp.InitialCluster, err = s.member.Members.AddLearner(actx, req.Host, req.EtcdPeerURL); err != nil {
				writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("add the etcd member of %s: %w (the join token is spent: make another)", req.Host, err))
				return
			}
		}
	}
	s.log.Info("host joined", "host", req.Host, "server", tok.Server, "token", tok.Name)
	httpjson.WriteIndented(w, http.StatusOK, resp)
}

// renewCert signs a new certificate for the host whose certificate the
// caller presents: for that host and its addresses, whatever the request
// says (it carries only the new key's request).
func (s *Server) renewCert(w http.ResponseWriter, r *http.Request) {
	host := pki.PeerHost(r.TLS)
	if host == "" {
		writeErr(w, http.StatusUnauthorized, errors.New("unauthenticated: a certificate is renewed by the host it names: present it"))
		return
	}
	if n, ok := r.Context().Value(auditKey{}).(*auditNote); ok {
		n.host = host
	}
	var req v1.RenewRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, fmt.Errorf("renew request: %w", err))
		return
	}
	if s.member.Identity == nil {
		writeErr(w, http.StatusServiceUnavailable, errors.New("this member has no certificates"))
		return
	}
	ca, err := pki.LoadAuthority(s.member.Identity.Dir())
	if err != nil {
		writeErr(w, http.StatusServiceUnavailable, errors.New("this member does not hold the CA key: renew through one that does"))
		return
	}
	if req.CSR == "" && req.StreamCSR == "" {
		writeErr(w, http.StatusBadRequest, errors.New("renew request: give csr, streamCSR or both"))
		return
	}
	sub := pki.SubjectOf(r.TLS.VerifiedChains[0][0])
	var resp v1.RenewResponse
	if req.CSR != "" {
		cert, err := ca.SignCSR([]byte(req.CSR), sub, time.Now(), s.member.certLifetime())
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		resp.Cert = string(cert)
	}
	if req.StreamCSR != "" {
		sca, err := pki.LoadStreamAuthority(s.member.Identity.Dir())
		if err != nil {
			writeErr(w, http.StatusServiceUnavailable, fmt.Errorf("this member does not hold the stream CA's key: %w", err))
			return
		}
		cert, err := sca.SignStreamCSR([]byte(req.StreamCSR), sub, time.Now())
		if err != nil {
			writeErr(w, http.StatusBadRequest, err)
			return
		}
		resp.StreamCert, resp.StreamCA = string(cert), string(sca.PEM)
	}
	httpjson.WriteIndented(w, http.StatusOK, resp)
}

// joinTicket is the ticket for a stored join token: the CA's
// fingerprint, this member's API addresses, and the ID and secret.
func (s *Server) joinTicket(t *auth.Token, secret string) (string, error) {
	if s.member.Identity == nil || len(s.member.APIs) == 0 {
		return "", errors.New("this member serves no https API for hosts to join through")
	}
	if _, err := os.Stat(filepath.Join(s.member.Identity.Dir(), pki.CAKeyFile)); err != nil {
		return "", errors.New("this member does not hold the CA key: make join tokens on one that does")
	}
	return auth.Ticket{CA: pki.Fingerprint(s.member.Identity.CA), APIs: s.member.APIs, ID: t.ID, Secret: secret, Server: t.Server}.String(), nil
}
