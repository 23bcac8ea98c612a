package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// vigil init with an external etcd records it for the cluster, and
// refuses one without https endpoints; a member whose data directory holds
// an embedded etcd member's data refuses to start against an external
// etcd (two etcds would be two clusters), and a restore points the
// operator at etcd's own tools.
func TestExternalEtcdIsTheClustersAndChecked(t *testing.T) {
	dir := t.TempDir()
	if _, err := runCLI("init", "--host", "root", "--address", "10.9.0.1", "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("init of a host named root (etcd's superuser): %v", err)
	}
	if out, err := runCLI("init", "--host", "host1", "--address", "10.9.0.1", "--data-dir", dir, "--etcd-external"); err == nil || !strings.Contains(err.Error(), "--etcd-endpoints") {
		t.Fatalf("init --etcd-external without endpoints: %v %s", err, out)
	}
	if _, err := runCLI("init", "--host", "host1", "--address", "10.9.0.1", "--data-dir", dir, "--etcd-external", "--etcd-endpoints", "http://10.9.0.5:2379"); err == nil || !strings.Contains(err.Error(), "https://") {
		t.Fatalf("init with a plaintext etcd: %v", err)
	}
	if out, err := runCLI("init", "--host", "host1", "--address", "10.9.0.1", "--data-dir", dir, "--etcd-external", "--etcd-endpoints", "https://10.9.0.5:2379,https://10.9.0.6:2379"); err != nil {
		t.Fatalf("init: %v %s", err, out)
	} else if !strings.Contains(out, "must trust "+filepath.Join(dir, "pki", "ca.crt")) {
		t.Errorf("init does not say which CA the etcd must trust: %s", out)
	}
	ci, err := readClusterInfo(dir)
	if err != nil || ci == nil || !ci.Server || !ci.EtcdExternal || len(ci.EtcdEndpoints) != 2 {
		b, _ := json.Marshal(ci)
		t.Fatalf("cluster.json after init: %s %v", b, err)
	}

	o := &daemonOpts{runServer: true, runAgent: true, host: "host1", dataDir: dir}
	if err := o.loadIdentity(nil); err != nil {
		t.Fatal(err)
	}
	if !o.etcdExternal || o.etcdEndpoints != "https://10.9.0.5:2379,https://10.9.0.6:2379" || o.initialCluster != "" || o.firstJoin {
		t.Fatalf("a member of an external-etcd cluster: external %v endpoints %q initial %q firstJoin %v", o.etcdExternal, o.etcdEndpoints, o.initialCluster, o.firstJoin)
	}
	if err := o.checkExternalEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "etcd", "member"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := o.checkExternalEtcd(); err == nil || !strings.Contains(err.Error(), "embedded etcd member's data") {
		t.Fatalf("a member with embedded etcd data started against an external etcd: %v", err)
	}
	// A member that joined an embedded cluster, told the etcd is external.
	joined := t.TempDir()
	if _, err := runCLI("init", "--host", "host2", "--address", "10.9.0.2", "--data-dir", joined); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(clusterInfo{Server: true, InitialCluster: "host1=https://10.9.0.1:2380,host2=https://10.9.0.2:2380", EtcdEndpoints: []string{"https://10.9.0.1:2379"}})
	if err := os.WriteFile(filepath.Join(joined, clusterFile), b, 0o644); err != nil {
		t.Fatal(err)
	}
	o = &daemonOpts{runServer: true, runAgent: true, host: "host2", dataDir: joined, etcdExternal: true}
	if err := o.loadIdentity(nil); err == nil || !strings.Contains(err.Error(), "embedded etcd") {
		t.Fatalf("a member of an embedded cluster started as external: %v", err)
	}
	if _, err := runCLI("cluster", "restore", filepath.Join(dir, "backup.tar.gz"), "--host", "host1", "--data-dir", dir); err == nil || !strings.Contains(err.Error(), "etcdutl snapshot restore") {
		t.Fatalf("restore on an external etcd: %v", err)
	}
}
