package vmscope

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	godbus "github.com/godbus/dbus/v5"
)

func TestScopeProperties(t *testing.T) {
	vm := VM{Name: "web", UID: "0f1e2d3c"}
	if vm.Unit() != "vm-web-0f1e2d3c" {
		t.Fatalf("unit %q", vm.Unit())
	}
	got := map[string]godbus.Variant{}
	for _, p := range ScopeProperties(vm, 4242, Slice) {
		got[p.Name] = p.Value
	}
	want := map[string]string{
		"Description": `"Vigil VM web (0f1e2d3c)"`,
		"Slice":       `"vigil.slice"`,
		"PIDs":        `@au [4242]`,
		"CollectMode": `"inactive-or-failed"`,
	}
	for k, w := range want {
		v, ok := got[k]
		if !ok {
			t.Errorf("no %s property", k)
			continue
		}
		if v.String() != w {
			t.Errorf("%s = %s, want %s", k, v.String(), w)
		}
	}
	if len(got) != len(want) {
		t.Errorf("properties %v: want exactly %v", got, want)
	}
}

func TestHierarchies(t *testing.T) {
	cg := "12:freezer:/lab/h1\n4:memory:/process_api/x\n3:cpuset:/\n2:cpu,cpuacct:/lab/h1\n1:name=systemd:/\n0::/\n"
	mi := `25 30 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro
26 25 0:23 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset
31 25 0:28 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
32 40 0:28 /lab /mnt/bind rw - cgroup cgroup rw,freezer
`
	var got []string
	for _, h := range hierarchies(cg, mi) {
		got = append(got, h.controllers+"@"+h.mount+":"+h.path)
	}
	want := "freezer@/sys/fs/cgroup/freezer:/lab/h1 memory@/sys/fs/cgroup/memory:/process_api/x cpuset@/sys/fs/cgroup/cpuset:/ " +
		"cpu,cpuacct@/sys/fs/cgroup/cpu,cpuacct:/lab/h1 name=systemd@/sys/fs/cgroup/systemd:/ @/sys/fs/cgroup/unified:/"
	if strings.Join(got, " ") != want {
		t.Fatalf("hierarchies:\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	if p, ok := besideOwn("/process_api/x"); !ok || p != "/process_api/vigil.slice" {
		t.Fatalf("beside: %s %v", p, ok)
	}
	if _, ok := underOwn("/"); ok {
		t.Fatal("self mode must not put VMs in the root cgroup")
	}
}

// TestDirsPlaceAndRelease moves a real process into its VM's cgroup, in
// every hierarchy this machine has, and removes the cgroups once it ends.
func TestDirsPlaceAndRelease(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make cgroups")
	}
	parent := fmt.Sprintf("/vigil-test-%d", os.Getpid())
	d, err := NewDirs(below(parent), "test", true)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, p := range d.Parents() {
			os.Remove(p)
		}
	})
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	vm := VM{Name: "web", UID: "u1"}
	if err := d.Place(context.Background(), cmd.Process.Pid, vm); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	n := strings.Count(string(b), parent+"/vm-web-u1\n")
	if n != len(d.Parents()) || n == 0 {
		t.Fatalf("the process is in %d of the %d VM cgroups:\n%s", n, len(d.Parents()), b)
	}
	// While it runs, Release and Sweep leave its cgroups alone.
	d.Release(vm)
	d.Sweep()
	for _, p := range d.Parents() {
		if _, err := os.Stat(filepath.Join(p, vm.Unit())); err != nil {
			t.Fatalf("a running VM's cgroup went: %v", err)
		}
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	d.Release(vm)
	for _, p := range d.Parents() {
		if _, err := os.Stat(filepath.Join(p, vm.Unit())); !os.IsNotExist(err) {
			t.Fatalf("the ended VM's cgroup %s stays: %v", filepath.Join(p, vm.Unit()), err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("the slice %s the VM's cgroup was made in stays: %v", p, err)
		}
	}
}
