package certrenew

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/api"
	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/store"
)

// A member renews its own certificate with the CA key; an agent host
// renews through a member's API, authenticated by the certificate it
// renews, and gets one for its own name and addresses only; a caller
// without a certificate is refused.
func TestRenew(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	mdir := filepath.Join(t.TempDir(), "pki")
	ca, err := pki.Init(mdir, pki.Subject{Host: "m1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	member, _ := pki.Load(mdir)
	old := member.Leaf().SerialNumber.String()
	if err := (&Renewer{ID: member, Log: log}).Renew(t.Context()); err != nil {
		t.Fatal(err)
	}
	if member.Leaf().SerialNumber.String() == old || member.Host() != "m1" {
		t.Fatalf("member's renewal: serial %s -> %s, host %s", old, member.Leaf().SerialNumber, member.Host())
	}

	// An agent host: a certificate for "a1" at 10.0.0.7, no CA key.
	adir := filepath.Join(t.TempDir(), "pki")
	key, csr, _ := pki.NewCSR("a1")
	cert, err := ca.SignCSR(csr, pki.Subject{Host: "a1", IPs: []net.IP{net.IPv4(10, 0, 0, 7)}}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := pki.EncodeKey(key)
	if err := os.MkdirAll(adir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(adir, pki.CACertFile), ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pki.SaveHost(adir, cert, kb); err != nil {
		t.Fatal(err)
	}
	agent, err := pki.Load(adir)
	if err != nil {
		t.Fatal(err)
	}
	st := store.New(etcdtest.Start(t))
	srv := httptest.NewUnstartedServer(api.New(st, log, nil, api.Cluster{Identity: member, CertLifetime: 2 * time.Hour}).Handler())
	srv.TLS = member.ServerTLS(tls.VerifyClientCertIfGiven)
	srv.StartTLS()
	defer srv.Close()
	// By name: httptest's own certificate answers clients without SNI.
	url := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	old = agent.Leaf().SerialNumber.String()
	if err := (&Renewer{ID: agent, APIs: []string{url}, Log: log}).Renew(t.Context()); err != nil {
		t.Fatal(err)
	}
	l := agent.Leaf()
	if l.SerialNumber.String() == old || agent.Host() != "a1" || l.VerifyHostname("10.0.0.7") != nil {
		t.Fatalf("agent's renewal: serial %s -> %s, host %s, IPs %v", old, l.SerialNumber, agent.Host(), l.IPAddresses)
	}
	if got := l.NotAfter.Sub(l.NotBefore); got < 2*time.Hour {
		t.Fatalf("renewed for %s, want the member's 2h", got)
	}
	if _, err := os.Stat(filepath.Join(adir, pki.CAKeyFile)); err == nil {
		t.Fatal("the agent host got the CA key")
	}
	// The agent host has no stream certificate (it joined before they
	// existed): a member signs one for the host its certificate names.
	if !pki.StreamDue(adir, time.Now()) {
		t.Fatal("no stream certificate, yet not due")
	}
	if err := (&Renewer{ID: agent, APIs: []string{url}, Log: log}).EnsureStream(t.Context()); err != nil {
		t.Fatal(err)
	}
	sc, err := pki.LoadStream(adir)
	if err != nil {
		t.Fatal(err)
	}
	sl, _ := pki.ParseCert(sc.Cert)
	if sl.Subject.CommonName != pki.StreamName("a1") || sl.VerifyHostname("10.0.0.7") != nil || pki.StreamDue(adir, time.Now()) {
		t.Fatalf("agent's stream certificate: %q, IPs %v", sl.Subject.CommonName, sl.IPAddresses)
	}
	// A member makes its own; and a fresh one is kept.
	if err := os.Remove(filepath.Join(mdir, pki.StreamCertFile)); err != nil {
		t.Fatal(err)
	}
	if err := (&Renewer{ID: member, Log: log}).EnsureStream(t.Context()); err != nil || pki.StreamDue(mdir, time.Now()) {
		t.Fatalf("member's stream certificate: %v", err)
	}
	before, _ := os.ReadFile(filepath.Join(mdir, pki.StreamCertFile))
	if err := (&Renewer{ID: member, Log: log}).EnsureStream(t.Context()); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(filepath.Join(mdir, pki.StreamCertFile)); string(after) != string(before) {
		t.Fatal("a stream certificate that is not due was replaced")
	}
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: member.Pool}}}
	resp, err := anon.Post(url+"/api/v1/certificates/renew", "application/json", strings.NewReader(`{"csr":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a renewal without a certificate: HTTP %d", resp.StatusCode)
	}
}
