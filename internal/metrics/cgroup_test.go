package metrics

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCgroupV1(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "cpuacct/lab/h1/cpuacct.usage"), "2500000000\n")
	write(t, filepath.Join(root, "memory/lab/h1/memory.usage_in_bytes"), "1000000\n")
	write(t, filepath.Join(root, "memory/lab/h1/memory.stat"), "cache 500\ntotal_inactive_file 200000\ntotal_rss 700000\n")
	u, err := Cgroup{Root: root, Path: "/lab/h1"}.Read()
	if err != nil {
		t.Fatal(err)
	}
	if u.CPU != 2500*time.Millisecond || u.MemoryBytes != 800000 || len(u.Pressure) != 0 {
		t.Fatalf("v1 usage %+v", u)
	}
}

func TestCgroupV2(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "cgroup.controllers"), "cpu memory io\n")
	write(t, filepath.Join(root, "vigil/cpu.stat"), "usage_usec 1500000\nuser_usec 1000000\n")
	write(t, filepath.Join(root, "vigil/memory.current"), "4096000\n")
	write(t, filepath.Join(root, "vigil/memory.stat"), "anon 3000000\ninactive_file 96000\n")
	write(t, filepath.Join(root, "vigil/cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=250000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")
	u, err := Cgroup{Root: root, Path: "vigil"}.Read()
	if err != nil {
		t.Fatal(err)
	}
	if u.CPU != 1500*time.Millisecond || u.MemoryBytes != 4000000 || u.Pressure["cpu"] != 250*time.Millisecond {
		t.Fatalf("v2 usage %+v", u)
	}
	if _, ok := u.Pressure["io"]; ok {
		t.Fatal("io pressure reported without an io.pressure file")
	}
}

func TestCgroupMissing(t *testing.T) {
	if _, err := (Cgroup{Root: t.TempDir(), Path: "/nope"}).Read(); err == nil {
		t.Fatal("read a cgroup that does not exist")
	}
}

// TestCgroupSelf: "self" finds the process's own cgroup in each v1
// hierarchy, which differ (a lab host's cpuacct and memory cgroups hang
// under different parents).
func TestCgroupSelf(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "cpuacct/vigil-lab-x/h1/cpuacct.usage"), "1000000000\n")
	write(t, filepath.Join(root, "memory/outer/vigil-lab-x/h1/memory.usage_in_bytes"), "5000\n")
	write(t, filepath.Join(root, "memory/outer/vigil-lab-x/h1/memory.stat"), "total_inactive_file 1000\n")
	self := filepath.Join(root, "self-cgroup")
	write(t, self, "9:freezer:/vigil-lab-x/h1\n4:memory:/outer/vigil-lab-x/h1\n2:cpu,cpuacct:/vigil-lab-x/h1\n0::/\n")
	u, err := Cgroup{Root: root, Path: SelfPath, Self: self}.Read()
	if err != nil {
		t.Fatal(err)
	}
	if u.CPU != time.Second || u.MemoryBytes != 4000 {
		t.Fatalf("usage %+v", u)
	}
}
