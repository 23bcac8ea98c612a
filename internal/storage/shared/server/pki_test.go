package server

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/pki"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/shared"
)

// testPKI is a cluster CA for this package's tests: the storage server's
// certificate, and each test host's host and stream certificates, made on
// first use.
type testPKI struct {
	dir string
	ca  *pki.Authority
	sca *pki.Authority // the stream CA

	mu    sync.Mutex
	hosts map[string]*pki.Identity
}

var (
	pkiOnce sync.Once
	thePKI  *testPKI
	pkiErr  error
)

func clusterPKI(t *testing.T) *testPKI {
	t.Helper()
	pkiOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-storage-pki-")
		if err != nil {
			pkiErr = err
			return
		}
		ca, err := pki.NewAuthority("test", time.Now())
		if err != nil {
			pkiErr = err
			return
		}
		sca, err := pki.NewStreamAuthority("test", time.Now())
		if err != nil {
			pkiErr = err
			return
		}
		if err := pki.IssueService(filepath.Join(dir, "storage"), ca, sca, "storage", []net.IP{net.IPv4(127, 0, 0, 1)}, time.Now()); err != nil {
			pkiErr = err
			return
		}
		thePKI = &testPKI{dir: dir, ca: ca, sca: sca, hosts: map[string]*pki.Identity{}}
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return thePKI
}

// storageDir is the storage server's PKI directory.
func (p *testPKI) storageDir() string { return filepath.Join(p.dir, "storage") }

// host is a test host's identity, with its stream certificate beside it
// and the stream credentials in QEMU's layout in qemu/.
func (p *testPKI) host(t *testing.T, name string) *pki.Identity {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if id := p.hosts[name]; id != nil {
		return id
	}
	dir := filepath.Join(p.dir, "hosts", name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := p.ca.Save(dir); err != nil {
		t.Fatal(err)
	}
	sub := pki.Subject{Host: name}
	if err := pki.IssueLocal(dir, p.ca, sub, time.Now(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := p.sca.SaveStreamCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := pki.IssueLocalStream(dir, p.sca, sub, time.Now()); err != nil {
		t.Fatal(err)
	}
	c, err := pki.LoadStream(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteQEMUDir(filepath.Join(dir, "qemu"), -1); err != nil {
		t.Fatal(err)
	}
	id, err := pki.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p.hosts[name] = id
	return id
}

// qemuDir is host's stream credentials directory for QEMU's
// tls-creds-x509.
func (p *testPKI) qemuDir(t *testing.T, host string) string {
	t.Helper()
	return filepath.Join(p.host(t, host).Dir(), "qemu")
}

// hostClients talks to a storage server as each test host, with that
// host's certificate: the server takes a host's requests from its own
// certificate only. Calls that name no host go as "h1".
type hostClients struct {
	*shared.Client
	base string
	pki  *testPKI
	t    *testing.T

	mu      sync.Mutex
	clients map[string]*shared.Client
}

func newHostClients(t *testing.T, base string, p *testPKI) *hostClients {
	hc := &hostClients{base: base, pki: p, t: t, clients: map[string]*shared.Client{}}
	hc.Client = hc.As("h1")
	return hc
}

// As is the client of host.
func (hc *hostClients) As(host string) *shared.Client {
	hc.mu.Lock()
	defer hc.mu.Unlock()
	if c := hc.clients[host]; c != nil {
		return c
	}
	c := shared.NewClient(hc.base, hc.pki.host(hc.t, host).ClientTLS())
	hc.clients[host] = c
	return c
}

func (hc *hostClients) Export(ctx context.Context, vm storage.VMRef, disk, host string, gen storage.Generation) (driver.NBDTarget, error) {
	return hc.As(host).Export(ctx, vm, disk, host, gen)
}

func (hc *hostClients) Unexport(ctx context.Context, vm, disk, host string) error {
	return hc.As(host).Unexport(ctx, vm, disk, host)
}

func (hc *hostClients) Grant(ctx context.Context, vm storage.VMRef, host string) (storage.Generation, error) {
	return hc.As(host).Grant(ctx, vm, host)
}

func (hc *hostClients) Prepare(ctx context.Context, vm storage.VMRef, host string) (storage.Generation, error) {
	return hc.As(host).Prepare(ctx, vm, host)
}

func (hc *hostClients) Heartbeat(ctx context.Context, host string, lease int64, vms []storage.HeldVM) (map[string]storage.Verdict, error) {
	return hc.As(host).Heartbeat(ctx, host, lease, vms)
}
