package backup

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/etcdtest"
)

// snapshotOf writes a snapshot of c's etcd to a file in dir.
func snapshotOf(t *testing.T, c *clientv3.Client, dir string) string {
	t.Helper()
	r, err := c.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := filepath.Join(dir, "snap.db")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

// TestRoundTripIntoAFreshMember backs up a real etcd, restores the backup
// into a new data directory and starts a member on it: the keys are
// there, the revision moved past the snapshot's (old watches are told to
// re-read), and the CA files are in the PKI directory.
func TestRoundTripIntoAFreshMember(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t)
	for _, k := range []string{"/vigil/vms/a", "/vigil/vms/b", "/vigil/rules/r"} {
		if _, err := c.Put(ctx, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	gr, err := c.Get(ctx, "/vigil/vms/a")
	if err != nil {
		t.Fatal(err)
	}
	rev := gr.Header.Revision
	work := t.TempDir()
	pki := map[string][]byte{"ca.crt": []byte("CA CERT"), "ca.key": []byte("CA KEY")}
	var buf bytes.Buffer
	if err := Write(&buf, Manifest{Created: time.Now(), Member: "host1", Revision: rev}, snapshotOf(t, c, work), pki); err != nil {
		t.Fatal(err)
	}
	// A change after the backup is not in it.
	if _, err := c.Put(ctx, "/vigil/vms/c", "later"); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(work, "backup.tar.gz")
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Read(file, work)
	if err != nil {
		t.Fatal(err)
	}
	if a.Manifest.Member != "host1" || a.Manifest.Revision != rev {
		t.Fatalf("manifest: %+v", a.Manifest)
	}
	data := filepath.Join(t.TempDir(), "data")
	etcdDir, pkiDir := filepath.Join(data, "etcd"), filepath.Join(data, "pki")
	// An existing etcd directory is moved aside, not lost.
	if err := os.MkdirAll(filepath.Join(etcdDir, "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(etcdDir, "member", "marker"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	peer := etcdtest.FreeURL(t)
	r, err := Restore(a, RestoreConfig{EtcdDir: etcdDir, PKIDir: pkiDir, Name: "host2", PeerURL: peer, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(r.MovedAside, "member", "marker")); err != nil || string(b) != "old" {
		t.Fatalf("the previous etcd data was not kept aside: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(pkiDir, "ca.key")); string(b) != "CA KEY" {
		t.Fatalf("ca.key = %q", b)
	}
	if fi, err := os.Stat(filepath.Join(pkiDir, "ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("ca.key mode: %v %v", fi, err)
	}
	rc, _ := etcdtest.StartIn(t, etcdDir, "host2", peer)
	got, err := rc.Get(ctx, "/vigil/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range got.Kvs {
		keys = append(keys, string(kv.Key))
	}
	if strings.Join(keys, " ") != "/vigil/rules/r /vigil/vms/a /vigil/vms/b" {
		t.Fatalf("restored keys %v, want the three backed-up ones", keys)
	}
	if got.Header.Revision < rev+RevisionBump {
		t.Fatalf("revision %d after restore: want it past %d + the bump, so that no watch resumes into the past", got.Header.Revision, rev)
	}
	ml, err := rc.MemberList(ctx)
	if err != nil || len(ml.Members) != 1 || ml.Members[0].Name != "host2" {
		t.Fatalf("members after restore: %v %v", ml, err)
	}
}

// TestRefusesDamageAndAnotherCluster: a damaged backup and a PKI
// directory of another cluster are refused before anything changes.
func TestRefusesDamageAndAnotherCluster(t *testing.T) {
	c := etcdtest.Start(t)
	work := t.TempDir()
	var buf bytes.Buffer
	if err := Write(&buf, Manifest{Created: time.Now()}, snapshotOf(t, c, work), map[string][]byte{"ca.crt": []byte("A")}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(work, "b")
	if err := os.WriteFile(file, buf.Bytes()[:buf.Len()/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(file, work); err == nil {
		t.Fatal("a truncated backup was read")
	}
	if err := os.WriteFile(file, []byte("not a backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Read(file, work); err == nil || !strings.Contains(err.Error(), "not a Vigil backup") {
		t.Fatalf("garbage: %v", err)
	}
	if err := os.WriteFile(file, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := Read(file, work)
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	pkiDir := filepath.Join(data, "pki")
	if err := os.MkdirAll(filepath.Join(data, "etcd", "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pkiDir, "ca.crt"), []byte("B"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Restore(a, RestoreConfig{EtcdDir: filepath.Join(data, "etcd"), PKIDir: pkiDir, Name: "h", PeerURL: "http://127.0.0.1:1", Now: time.Now()})
	if err == nil || !strings.Contains(err.Error(), "another cluster") {
		t.Fatalf("restore over another cluster's CA: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "etcd", "member")); err != nil {
		t.Fatalf("a refused restore touched the etcd data: %v", err)
	}
}
