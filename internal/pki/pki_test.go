package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func mustInit(t *testing.T, host string) (string, *Authority) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := Init(dir, Subject{Host: host, IPs: []net.IP{net.IPv4(10, 0, 0, 1)}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return dir, ca
}

// A host's identity verifies under its own CA, names the host, holds its
// addresses, and serves both ends of a link; a second init is refused.
func TestInitLoad(t *testing.T) {
	dir, ca := mustInit(t, "host1")
	id, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if id.Host() != "host1" || Fingerprint(id.CA) != Fingerprint(ca.Cert) {
		t.Fatalf("identity %s under %s", id.Host(), Fingerprint(id.CA))
	}
	if err := id.Leaf().VerifyHostname("10.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, KeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("host key mode %v", fi.Mode().Perm())
	}
	if _, err := Init(dir, Subject{Host: "host1"}, time.Now()); err == nil {
		t.Fatal("a second init over an existing CA succeeded")
	}
	if _, err := Load(t.TempDir()); err == nil || !strings.Contains(err.Error(), "vigil init") {
		t.Fatalf("an empty directory: %v", err)
	}
}

// mTLS between two hosts of one cluster works; a host of another
// cluster is refused in the handshake, both ways.
func TestMutualTLS(t *testing.T) {
	dirA, ca := mustInit(t, "host1")
	key, csr, err := NewCSR("host2")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.SignCSR(csr, Subject{Host: "host2"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := EncodeKey(key)
	dirB := filepath.Join(t.TempDir(), "pki")
	if err := os.MkdirAll(dirB, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirB, CACertFile), ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := SaveHost(dirB, cert, kb); err != nil {
		t.Fatal(err)
	}
	a, _ := Load(dirA)
	b, err := Load(dirB)
	if err != nil {
		t.Fatal(err)
	}
	dirX, _ := mustInit(t, "host1")
	x, _ := Load(dirX)

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(PeerHost(r.TLS)))
	}))
	srv.TLS = a.ServerTLS(tls.RequireAndVerifyClientCert)
	srv.StartTLS()
	defer srv.Close()
	get := func(id *Identity) (string, error) {
		// By name: see TestPinnedTLS.
		return getVia(id.ClientTLS(), strings.Replace(srv.URL, "127.0.0.1", "localhost", 1))
	}
	if who, err := get(b); err != nil || who != "host2" {
		t.Fatalf("host2 of the cluster: %q, %v", who, err)
	}
	if _, err := get(x); err == nil {
		t.Fatal("a host of another cluster was served")
	}
}

// A pinned client reaches a server whose chain holds the pinned CA, and
// refuses any other server before a request is sent.
func TestPinnedTLS(t *testing.T) {
	dir, ca := mustInit(t, "host1")
	id, _ := Load(dir)
	sent := false
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { sent = true }))
	srv.TLS = id.ServerTLS(tls.VerifyClientCertIfGiven)
	srv.StartTLS()
	defer srv.Close()
	get := func(fp string) error {
		// By name: httptest adds a certificate of its own, which a
		// client without SNI (an IP address) would get instead.
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: PinnedTLS(fp, "localhost")}}
		resp, err := c.Get(strings.Replace(srv.URL, "127.0.0.1", "localhost", 1))
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	if err := get(Fingerprint(ca.Cert)); err != nil || !sent {
		t.Fatalf("pinned to the right CA: %v (request arrived: %v)", err, sent)
	}
	sent = false
	_, other := mustInit(t, "host1")
	if err := get(Fingerprint(other.Cert)); err == nil || !strings.Contains(err.Error(), "not the one the token pins") || sent {
		t.Fatalf("pinned to another CA: %v (request arrived: %v)", err, sent)
	}
}

// A stream certificate (a QEMU's) is signed by the cluster CA but is no
// host: PeerHost, which every endpoint uses to tell a host, refuses it.
func TestStreamCertificateIsNoHost(t *testing.T) {
	dir := t.TempDir()
	ca, err := Init(dir, Subject{Host: "h1", IPs: []net.IP{net.IPv4(10, 0, 2, 1)}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := LoadStream(dir)
	if err != nil {
		t.Fatalf("init made no stream certificate: %v", err)
	}
	leaf, err := ParseCert(c.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "qemu@h1" || leaf.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		t.Fatalf("stream certificate %q, key usage %v", leaf.Subject.CommonName, leaf.KeyUsage)
	}
	if !slices.ContainsFunc(leaf.IPAddresses, func(ip net.IP) bool { return ip.Equal(net.IPv4(10, 0, 2, 1)) }) {
		t.Fatalf("stream certificate addresses %v: QEMU checks the server's against the address it dials", leaf.IPAddresses)
	}
	// Signed by the stream CA, which only streams trust: etcd, the API and
	// the agents trust the cluster CA, and refuse it in the handshake.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(ca.Cert), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("the cluster CA vouches for a stream certificate")
	}
	sca, err := ParseCert(c.CA)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: poolOf(sca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil || sca.Equal(ca.Cert) {
		t.Fatalf("stream certificate not signed by the stream CA: %v", err)
	}
	id, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := PeerHost(&tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf, ca.Cert}}}); got != "" {
		t.Fatalf("PeerHost of a stream certificate = %q, want none", got)
	}
	if got := PeerHost(&tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{id.Leaf(), ca.Cert}}}); got != "h1" {
		t.Fatalf("PeerHost of the host certificate = %q", got)
	}
	if StreamDN("h1") != "O=Vigil streams,CN=qemu@h1" {
		t.Fatalf("StreamDN = %q", StreamDN("h1"))
	}
	if StreamDue(dir, time.Now()) || !StreamDue(dir, time.Now().Add(StreamLifetime*3/4)) || !StreamDue(t.TempDir(), time.Now()) {
		t.Fatal("StreamDue: want false when fresh, true in the last third and when missing")
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

// A host trusts an external etcd's server certificate from another CA
// only when given that CA's file, and then that CA alone (a server with a
// cluster host's certificate is refused: any joining host can get one for
// any address); it still presents its own certificate (what the etcd maps
// to the host's user).
func TestClientTLSTrusting(t *testing.T) {
	dir, _ := mustInit(t, "host1")
	id, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	eca, err := NewCA("etcd CA", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := eca.Sign(key.Public(), Subject{Host: "etcd1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := EncodeKey(key)
	serverCert, err := tls.X509KeyPair(certPEM, kb)
	if err != nil {
		t.Fatal(err)
	}
	clients := x509.NewCertPool()
	clients.AddCert(id.CA)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(PeerHost(r.TLS)))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clients}
	srv.StartTLS()
	defer srv.Close()
	url := strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)
	get := func(c *tls.Config) (string, error) { return getVia(c, url) }
	if _, err := get(id.ClientTLS()); err == nil {
		t.Fatal("a server of another CA was trusted without its CA file")
	}
	caFile := filepath.Join(t.TempDir(), "etcd-ca.crt")
	if err := os.WriteFile(caFile, eca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := id.ClientTLSTrusting(caFile)
	if err != nil {
		t.Fatal(err)
	}
	if who, err := get(c); err != nil || who != "host1" {
		t.Fatalf("with the etcd CA file: %q, %v", who, err)
	}
	impostor := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	impostor.TLS = id.ServerTLS(tls.NoClientCert)
	impostor.StartTLS()
	defer impostor.Close()
	if _, err := getVia(c, strings.Replace(impostor.URL, "127.0.0.1", "localhost", 1)); err == nil {
		t.Fatal("with the etcd CA file, a server with a cluster host's certificate was trusted as the etcd")
	}
	if err := os.WriteFile(caFile, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := id.ClientTLSTrusting(caFile); err == nil || !strings.Contains(err.Error(), "no PEM") {
		t.Fatalf("a CA file without a certificate: %v", err)
	}
}

// getVia GETs url with the client TLS configuration c and returns the
// start of the body (the test servers answer the peer's host name).
func getVia(c *tls.Config, url string) (string, error) {
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: c}}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	buf := make([]byte, 64)
	n, _ := resp.Body.Read(buf)
	return string(buf[:n]), nil
}
