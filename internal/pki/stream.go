package pki

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vigilha/vigil/internal/atomicfile"
)

// A host's stream certificate is the identity of its QEMU processes (and
// its storage daemons) on the streams between hosts: migration, the NBD
// exports of a migration's disks, replicas and the shared storage. QEMU
// reads its credentials from files, and a VM's QEMU is the untrusted party:
// so it gets a certificate of its own, never the host's, signed by a CA of
// its own, the stream CA, which only streams trust: etcd (its client and
// peer ports), the API and the agents' endpoints trust the cluster CA
// alone, so a QEMU that escapes its guest's grip cannot even complete a
// handshake with them, and reaches the streams its host may reach and
// nothing else. Its name is not a host's either ("qemu@host1"; host names
// are DNS labels, without '@') and its organisation is StreamOrganization.
// Control-plane members hold the stream CA's key as they hold the cluster
// CA's.
const (
	StreamCertFile     = "stream.crt"
	StreamKeyFile      = "stream.key"
	StreamCACertFile   = "stream-ca.crt"
	StreamCAKeyFile    = "stream-ca.key"
	StreamOrganization = "Vigil streams"
	// StreamLifetime is a stream certificate's lifetime. It does not
	// follow a host certificate's (which a test may make minutes long):
	// QEMU and qemu-storage-daemon read their credentials when a server
	// or a connection is set up and keep them for as long as it lasts.
	StreamLifetime = HostLifetime
)

// NewStreamAuthority makes a cluster's stream CA.
func NewStreamAuthority(cluster string, now time.Time) (*Authority, error) {
	return newAuthority("Vigil stream CA "+cluster, now)
}

// LoadStreamAuthority reads the stream CA and its key from dir.
func LoadStreamAuthority(dir string) (*Authority, error) {
	return loadAuthority(dir, StreamCACertFile, StreamCAKeyFile)
}

// SaveStreamCA writes a the stream CA's certificate and key into dir.
func (a *Authority) SaveStreamCA(dir string) error {
	return a.saveAs(dir, StreamCACertFile, StreamCAKeyFile)
}

// StreamName is the common name of host's stream certificate.
func StreamName(host string) string { return "qemu@" + host }

// StreamDN is the distinguished name of host's stream certificate as QEMU
// prints it (GnuTLS, in the certificate's own order: organisation first),
// which is what QEMU's authz objects match.
func StreamDN(host string) string {
	return "O=" + StreamOrganization + ",CN=" + StreamName(host)
}

// SignStream issues host sub.Host's stream certificate for pub: for both
// ends of a stream, valid for the host's addresses (a stream's client
// checks the server's certificate against the address it dialled).
func (a *Authority) SignStream(pub crypto.PublicKey, sub Subject, now time.Time, lifetime time.Duration) ([]byte, error) {
	if sub.Host == "" {
		return nil, errors.New("a stream certificate needs a host name")
	}
	return a.certify(pub, &x509.Certificate{
		Subject: pkix.Name{CommonName: StreamName(sub.Host), Organization: []string{StreamOrganization}},
		// GnuTLS (QEMU) refuses a certificate without key encipherment
		// whatever the key type, although ECDSA never uses it.
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1)}, sub.IPs...),
	}, now, lifetime)
}

// SignStreamCSR is SignStream for a certificate request's key.
func (a *Authority) SignStreamCSR(csrPEM []byte, sub Subject, now time.Time) ([]byte, error) {
	pub, err := csrKey(csrPEM)
	if err != nil {
		return nil, fmt.Errorf("stream certificate: %w", err)
	}
	return a.SignStream(pub, sub, now, StreamLifetime)
}

// IssueLocalStream gives this host a fresh stream key and certificate
// signed by ca (the stream CA), in dir.
func IssueLocalStream(dir string, ca *Authority, sub Subject, now time.Time) error {
	return issue(func(pub crypto.PublicKey) ([]byte, error) { return ca.SignStream(pub, sub, now, StreamLifetime) },
		func(cert, key []byte) error { return SaveStream(dir, cert, key) })
}

// SaveStream writes a stream certificate and its key, key first (as
// SaveHost does).
func SaveStream(dir string, certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("stream certificate and key do not match: %w", err)
	}
	if err := atomicfile.Write(filepath.Join(dir, StreamKeyFile), keyPEM, 0o600); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, StreamCertFile), certPEM, 0o644)
}

// StreamCreds are the PEM files QEMU's tls-creds-x509 reads: the stream
// CA, and this host's (or the storage server's) stream certificate and key.
type StreamCreds struct {
	CA, Cert, Key []byte
}

// LoadStream reads the stream credentials of the PKI directory dir: the
// key must match the certificate, and the certificate be the stream CA's.
// They are read from disk at each use, so a renewal is picked up by the
// next server or connection set up.
func LoadStream(dir string) (StreamCreds, error) {
	var c StreamCreds
	var err error
	if c.CA, err = os.ReadFile(filepath.Join(dir, StreamCACertFile)); err != nil {
		return c, fmt.Errorf("stream credentials: %w", err)
	}
	if c.Cert, err = os.ReadFile(filepath.Join(dir, StreamCertFile)); err != nil {
		return c, fmt.Errorf("stream credentials: %w", err)
	}
	if c.Key, err = os.ReadFile(filepath.Join(dir, StreamKeyFile)); err != nil {
		return c, fmt.Errorf("stream credentials: %w", err)
	}
	pair, err := tls.X509KeyPair(c.Cert, c.Key)
	if err != nil {
		return c, fmt.Errorf("stream credentials in %s: %w", dir, err)
	}
	ca, err := ParseCert(c.CA)
	if err != nil {
		return c, fmt.Errorf("stream CA in %s: %w", dir, err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return c, fmt.Errorf("stream certificate in %s is not the stream CA's: %w", dir, err)
	}
	return c, nil
}

// StreamDue says whether dir's stream certificate is missing, unreadable,
// or in the last third of its life.
func StreamDue(dir string, now time.Time) bool {
	b, err := os.ReadFile(filepath.Join(dir, StreamCertFile))
	if err != nil {
		return true
	}
	c, err := ParseCert(b)
	if err != nil {
		return true
	}
	life := c.NotAfter.Sub(c.NotBefore)
	return now.After(c.NotAfter.Add(-life / 3))
}

// ffdhe2048 is RFC 7919's 2048-bit finite-field Diffie-Hellman group, a
// published constant. QEMU's server credentials load dh-params.pem from
// their directory and, without one, generate parameters at each creation
// (80-190 ms measured here, in a migration's destination start). The
// handshakes use ECDHE with these keys anyway; the parameters are only
// QEMU's requirement.
const ffdhe2048 = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

// WriteQEMUDir writes the credentials into dir under the names QEMU's
// tls-creds-x509 reads, for both endpoints, readable by group gid (the
// QEMU user's; -1: leave the group) and nobody else.
func (c StreamCreds) WriteQEMUDir(dir string, gid int) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	if gid >= 0 {
		if err := os.Chown(dir, 0, gid); err != nil {
			return err
		}
	}
	files := map[string][]byte{
		"ca-cert.pem": c.CA, "server-cert.pem": c.Cert, "client-cert.pem": c.Cert,
		"server-key.pem": c.Key, "client-key.pem": c.Key, "dh-params.pem": []byte(ffdhe2048),
	}
	for name, b := range files {
		p := filepath.Join(dir, name)
		if err := atomicfile.Write(p, b, 0o640); err != nil {
			return err
		}
		if gid >= 0 {
			if err := os.Chown(p, 0, gid); err != nil {
				return err
			}
		}
	}
	return nil
}

// ServiceOrganization is the organisation of a cluster service's
// certificate (the shared storage server's): no host, and no stream.
const ServiceOrganization = "Vigil services"

// IssueService makes the certificates of a cluster service named name (the
// storage server), valid for its addresses, and writes them into dir as
// that service's PKI directory: the cluster CA's certificate and the
// service's under the names Load reads (host.crt, host.key), for its https
// API; and the stream CA's and the service's stream certificate (the names
// LoadStream reads), for its NBD servers, which QEMU verifies against the
// stream CA.
func IssueService(dir string, ca, sca *Authority, name string, ips []net.IP, now time.Time) error {
	if name == "" || len(ips) == 0 {
		return errors.New("a service certificate needs a name and an address")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, c := range []struct {
		ca           *Authority
		caFile       string
		save         func(dir string, cert, key []byte) error
		encipherment x509.KeyUsage
	}{
		{ca, CACertFile, SaveHost, 0},
		{sca, StreamCACertFile, SaveStream, x509.KeyUsageKeyEncipherment},
	} {
		if err := atomicfile.Write(filepath.Join(dir, c.caFile), c.ca.PEM, 0o644); err != nil {
			return err
		}
		err := issue(func(pub crypto.PublicKey) ([]byte, error) {
			return c.ca.signService(pub, name, ips, now, c.encipherment)
		}, func(cert, key []byte) error { return c.save(dir, cert, key) })
		if err != nil {
			return err
		}
	}
	return nil
}

// signService certifies a service's key: a server, no host.
func (a *Authority) signService(pub crypto.PublicKey, name string, ips []net.IP, now time.Time, extra x509.KeyUsage) ([]byte, error) {
	return a.certify(pub, &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{ServiceOrganization}},
		KeyUsage:    x509.KeyUsageDigitalSignature | extra,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{name},
		IPAddresses: append([]net.IP{net.IPv4(127, 0, 0, 1)}, ips...),
	}, now, HostLifetime)
}
