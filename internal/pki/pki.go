// Package pki is the cluster's certificate authority and each host's
// identity: the CA certificate every link trusts, and the host's own
// certificate and key, which it presents on every link (etcd, the API,
// agent endpoints) as a server and as a client.
//
// Keys are ECDSA P-256: every party here speaks it (Go's TLS, etcd, QEMU's
// GnuTLS), a handshake with it costs a fraction of an RSA-2048 one, which
// matters to the short API calls and the lease renewals, and its keys
// and certificates are small. Ed25519 would be smaller still, but GnuTLS
// builds and browsers do not all accept it in certificates.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/vigilha/vigil/internal/atomicfile"
)

// Files of a PKI directory (DATA_DIR/pki by default).
const (
	CACertFile = "ca.crt"
	// CAKeyFile exists only on control-plane members, which sign the
	// certificates of joining hosts.
	CAKeyFile = "ca.key"
	CertFile  = "host.crt"
	KeyFile   = "host.key"
)

// Lifetimes: the CA lives ten years; a host certificate a year, and is
// renewed well before it ends.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	HostLifetime = 365 * 24 * time.Hour
)

// HostOrganization is the organisation of every host certificate: what
// tells a host from the other certificates the CA signs (streams').
const HostOrganization = "Vigil hosts"

// ErrNoPKI is returned by Load for a directory without a host certificate.
var ErrNoPKI = errors.New("no certificates")

// NewKey makes a host or CA key.
func NewKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// EncodeKey renders a private key as PEM (PKCS #8).
func EncodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// ParseCert reads one PEM certificate.
func ParseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("not a PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("not a signing key")
	}
	return s, nil
}

// Fingerprint is a certificate's SHA-256, hex: what a join token pins.
func Fingerprint(c *x509.Certificate) string {
	s := sha256.Sum256(c.Raw)
	return hex.EncodeToString(s[:])
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// Authority is the cluster CA with its key: it signs hosts' certificates.
type Authority struct {
	Cert *x509.Certificate
	// PEM is Cert as the CA file holds it.
	PEM []byte
	key crypto.Signer
}

// NewAuthority makes a cluster CA named for cluster.
func NewAuthority(cluster string, now time.Time) (*Authority, error) {
	return newAuthority("Vigil cluster CA "+cluster, now)
}

// NewCA makes a CA named name outside the cluster's own PKI: the lab's
// external etcd has one, as an operator's etcd usually does.
func NewCA(name string, now time.Time) (*Authority, error) { return newAuthority(name, now) }

func newAuthority(name string, now time.Time) (*Authority, error) {
	k, err := NewKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Vigil"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CALifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, tpl, k.Public(), k)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Authority{Cert: c, PEM: encodeCert(der), key: k}, nil
}

// LoadAuthority reads the CA and its key from dir.
func LoadAuthority(dir string) (*Authority, error) {
	return loadAuthority(dir, CACertFile, CAKeyFile)
}

func loadAuthority(dir, certFile, keyFile string) (*Authority, error) {
	cb, err := os.ReadFile(filepath.Join(dir, certFile))
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, err
	}
	c, err := ParseCert(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, certFile), err)
	}
	k, err := parseKey(kb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, keyFile), err)
	}
	return &Authority{Cert: c, PEM: cb, key: k}, nil
}

// KeyPEM is the CA's key, for a control-plane member that joins (it signs
// too) and for the CA file.
func (a *Authority) KeyPEM() ([]byte, error) { return EncodeKey(a.key) }

// Save writes the CA certificate and key into dir.
func (a *Authority) Save(dir string) error { return a.saveAs(dir, CACertFile, CAKeyFile) }

func (a *Authority) saveAs(dir, certFile, keyFile string) error {
	kb, err := a.KeyPEM()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, keyFile), kb, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, certFile), a.PEM, 0o644)
}

// Subject is who a host certificate is for: the host's name (its identity
// everywhere) and the addresses it serves on.
type Subject struct {
	Host string
	IPs  []net.IP
	// DNS are extra names (the host name is always one).
	DNS []string
}

// Sign issues a host certificate for pub, good for lifetime from now, for
// both ends of a TLS link (etcd peers are both).
func (a *Authority) Sign(pub crypto.PublicKey, sub Subject, now time.Time, lifetime time.Duration) ([]byte, error) {
	if sub.Host == "" {
		return nil, errors.New("a host certificate needs a host name")
	}
	return a.certify(pub, &x509.Certificate{
		Subject:     pkix.Name{CommonName: sub.Host, Organization: []string{HostOrganization}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    append([]string{sub.Host, "localhost"}, sub.DNS...),
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1)}, sub.IPs...),
	}, now, lifetime)
}

// certify signs tpl (its subject, usages and names) for pub: with a fresh
// serial, valid for lifetime from now (within the CA's own validity), and
// from a little before now, since hosts' clocks differ a little (a short
// lifetime, a test's, is not made mostly of that margin).
func (a *Authority) certify(pub crypto.PublicKey, tpl *x509.Certificate, now time.Time, lifetime time.Duration) ([]byte, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	tpl.SerialNumber = sn
	tpl.NotBefore = now.Add(-min(5*time.Minute, lifetime/10))
	tpl.NotAfter = now.Add(lifetime)
	if tpl.NotAfter.After(a.Cert.NotAfter) {
		tpl.NotAfter = a.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tpl, a.Cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("sign the certificate of %s: %w", tpl.Subject.CommonName, err)
	}
	return encodeCert(der), nil
}

// SignCSR issues a host certificate for a certificate request: the key is
// the request's, the subject the caller's (a request names its host, but
// only the join that authenticated it decides).
func (a *Authority) SignCSR(csrPEM []byte, sub Subject, now time.Time, lifetime time.Duration) ([]byte, error) {
	pub, err := csrKey(csrPEM)
	if err != nil {
		return nil, err
	}
	return a.Sign(pub, sub, now, lifetime)
}

// csrKey is the public key of a PEM certificate request, once its
// signature is checked (the requester holds the private key).
func csrKey(csrPEM []byte) (crypto.PublicKey, error) {
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("not a PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, errors.New("certificate request: want an ECDSA P-256 key")
	}
	return csr.PublicKey, nil
}

// NewCSR makes a key and a certificate request for host.
func NewCSR(host string) (key *ecdsa.PrivateKey, csrPEM []byte, err error) {
	key, err = NewKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: host}}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Init makes a new cluster in dir: its CA, and the first host's
// certificate. It refuses a directory that already holds one.
func Init(dir string, sub Subject, now time.Time) (*Authority, error) {
	return InitFor(dir, sub, now, HostLifetime)
}

// InitFor is Init with the host certificate's lifetime.
func InitFor(dir string, sub Subject, now time.Time, lifetime time.Duration) (*Authority, error) {
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		return nil, fmt.Errorf("%s already holds a cluster CA: this host belongs to a cluster", dir)
	}
	ca, err := NewAuthority(sub.Host, now)
	if err != nil {
		return nil, err
	}
	if err := ca.Save(dir); err != nil {
		return nil, err
	}
	if err := IssueLocal(dir, ca, sub, now, lifetime); err != nil {
		return nil, err
	}
	sca, err := NewStreamAuthority(sub.Host, now)
	if err != nil {
		return nil, err
	}
	if err := sca.SaveStreamCA(dir); err != nil {
		return nil, err
	}
	if err := IssueLocalStream(dir, sca, sub, now); err != nil {
		return nil, err
	}
	return ca, nil
}

// IssueLocal gives this host a fresh key and certificate signed by ca, in
// dir (rotation and init).
func IssueLocal(dir string, ca *Authority, sub Subject, now time.Time, lifetime time.Duration) error {
	return issue(func(pub crypto.PublicKey) ([]byte, error) { return ca.Sign(pub, sub, now, lifetime) },
		func(cert, key []byte) error { return SaveHost(dir, cert, key) })
}

// issue makes a key, has sign certify it and save keep both.
func issue(sign func(crypto.PublicKey) ([]byte, error), save func(cert, key []byte) error) error {
	k, err := NewKey()
	if err != nil {
		return err
	}
	cert, err := sign(k.Public())
	if err != nil {
		return err
	}
	kb, err := EncodeKey(k)
	if err != nil {
		return err
	}
	return save(cert, kb)
}

// SaveHost writes a host's certificate and key once it has checked that
// they match. Both are written beside the old pair first and then renamed,
// key first: a crash leaves the old pair, or the new key with the old
// certificate, which Reload refuses loudly rather than using half.
func SaveHost(dir string, certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("host certificate and key do not match: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, KeyFile+".new"), keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, CertFile+".new"), certPEM, 0o644); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, KeyFile+".new"), filepath.Join(dir, KeyFile)); err != nil {
		return err
	}
	return os.Rename(filepath.Join(dir, CertFile+".new"), filepath.Join(dir, CertFile))
}

// Identity is a host's TLS identity: the CA it trusts and the certificate
// it presents. The certificate can be replaced while it is in use
// (Reload): every handshake takes the current one.
type Identity struct {
	dir  string
	CA   *x509.Certificate
	Pool *x509.CertPool
	cert atomic.Pointer[tls.Certificate]
}

// Load reads a PKI directory.
func Load(dir string) (*Identity, error) {
	cb, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w (run `vigil init` on a cluster's first host, or `vigil join TOKEN`)", dir, ErrNoPKI)
	}
	if err != nil {
		return nil, err
	}
	ca, err := ParseCert(cb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, CACertFile), err)
	}
	id := &Identity{dir: dir, CA: ca, Pool: x509.NewCertPool()}
	id.Pool.AddCert(ca)
	if err := id.Reload(); err != nil {
		return nil, err
	}
	return id, nil
}

// Reload takes the host certificate from the directory again (after a
// rotation).
func (id *Identity) Reload() error {
	cert, err := tls.LoadX509KeyPair(filepath.Join(id.dir, CertFile), filepath.Join(id.dir, KeyFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%s: %w (run `vigil init` or `vigil join TOKEN`)", id.dir, ErrNoPKI)
		}
		return fmt.Errorf("host certificate in %s: %w", id.dir, err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return err
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: id.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("host certificate in %s is not signed by the cluster CA: %w", id.dir, err)
	}
	cert.Leaf = leaf
	// The chain carries the CA too, so that a client that pins the CA by
	// its fingerprint (a host joining with a token) finds it.
	cert.Certificate = append(cert.Certificate, id.CA.Raw)
	id.cert.Store(&cert)
	return nil
}

// Dir is the PKI directory.
func (id *Identity) Dir() string { return id.dir }

// Host is the host name this identity's certificate is for.
func (id *Identity) Host() string { return id.cert.Load().Leaf.Subject.CommonName }

// Leaf is the current host certificate.
func (id *Identity) Leaf() *x509.Certificate { return id.cert.Load().Leaf }

// Files are the paths of the CA, host certificate and key (for etcd's own
// TLS settings and QEMU's, which read files).
func (id *Identity) Files() (ca, cert, key string) {
	return filepath.Join(id.dir, CACertFile), filepath.Join(id.dir, CertFile), filepath.Join(id.dir, KeyFile)
}

// ServerTLS is the configuration of a listener: the host certificate,
// client certificates checked against the CA when presented (required
// with clientAuth tls.RequireAndVerifyClientCert).
func (id *Identity) ServerTLS(clientAuth tls.ClientAuthType) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     clientAuth,
		ClientCAs:      id.Pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return id.cert.Load(), nil },
	}
}

// ClientTLS is the configuration of a client: servers are checked against
// the CA, and the host certificate is this client's identity.
func (id *Identity) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    id.Pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return id.cert.Load(), nil
		},
	}
}

// ClientTLSTrusting is ClientTLS whose servers are checked against the
// CAs in caFile (PEM) instead of the cluster CA: an external etcd whose
// certificates come from its operator's own CA. Instead, not as well: a
// host certificate, which any joining host can get for any address, must
// not pass for that etcd. The host still presents its cluster
// certificate. An empty caFile is ClientTLS.
func (id *Identity) ClientTLSTrusting(caFile string) (*tls.Config, error) {
	c := id.ClientTLS()
	if caFile == "" {
		return c, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("CA file %s holds no PEM certificate", caFile)
	}
	c.RootCAs = pool
	return c, nil
}

// PeerHost is the host a verified TLS peer is: its certificate's common
// name, or "" for a peer without a verified certificate.
func PeerHost(cs *tls.ConnectionState) string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return ""
	}
	// The CA signs stream certificates too (QEMU's, which a VM's QEMU
	// can read): those are no host, whatever they are named.
	leaf := cs.VerifiedChains[0][0]
	if !slices.Equal(leaf.Subject.Organization, []string{HostOrganization}) {
		return ""
	}
	return leaf.Subject.CommonName
}

// PinnedTLS is the configuration of a client that trusts exactly the CA
// whose fingerprint it holds (a host joining with a token): the server
// must present that CA in its chain and a certificate the CA signed for
// serverName. The handshake fails before any request is sent otherwise.
func PinnedTLS(fingerprint, serverName string) *tls.Config {
	want := strings.ToLower(fingerprint)
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is VerifyConnection's: the system roots mean
		// nothing here, only the pinned CA does.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			var ca *x509.Certificate
			for _, c := range cs.PeerCertificates {
				if Fingerprint(c) == want {
					ca = c
				}
			}
			if ca == nil || len(cs.PeerCertificates) == 0 {
				got := "none"
				if n := len(cs.PeerCertificates); n > 0 {
					got = Fingerprint(cs.PeerCertificates[n-1])
				}
				return fmt.Errorf("the server's CA is not the one the token pins (token: %s, server: %s): it belongs to another cluster, or someone is in between; nothing was sent", short(want), short(got))
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: serverName})
			if err != nil {
				return fmt.Errorf("the server's certificate is not valid for %s under the pinned CA: %w", serverName, err)
			}
			return nil
		},
	}
}

func short(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "…"
	}
	return fp
}

// Subject is what the current certificate is for: its host and its
// addresses (without the ones every certificate holds).
func (id *Identity) Subject() Subject { return SubjectOf(id.Leaf()) }

// SubjectOf reads a host certificate's subject, for its renewal: the same
// host and addresses, whatever a request says.
func SubjectOf(c *x509.Certificate) Subject {
	s := Subject{Host: c.Subject.CommonName}
	for _, ip := range c.IPAddresses {
		if !ip.IsLoopback() {
			s.IPs = append(s.IPs, ip)
		}
	}
	for _, d := range c.DNSNames {
		if d != s.Host && d != "localhost" {
			s.DNS = append(s.DNS, d)
		}
	}
	return s
}

// RenewDue says whether the certificate is in the last third of its life,
// when hosts renew it.
func (id *Identity) RenewDue(now time.Time) bool {
	l := id.Leaf()
	life := l.NotAfter.Sub(l.NotBefore)
	return now.After(l.NotAfter.Add(-life / 3))
}

// Changed says whether the certificate file differs from the one loaded
// (a rotation wrote a new one).
func (id *Identity) Changed() bool {
	b, err := os.ReadFile(filepath.Join(id.dir, CertFile))
	if err != nil {
		return false
	}
	c, err := ParseCert(b)
	return err == nil && !c.Equal(id.Leaf())
}
