package netlab

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDerivePrefix(t *testing.T) {
	a, b := DerivePrefix("/tmp/lab-a"), DerivePrefix("/tmp/lab-b")
	if a == b {
		t.Errorf("different dirs share prefix %q", a)
	}
	if DerivePrefix("/tmp/lab-a/") != a {
		t.Error("prefix depends on trailing slash")
	}
	for _, p := range []string{a, b} {
		if err := ValidatePrefix(p); err != nil || len(p) != 5 {
			t.Errorf("derived %q: %v", p, err)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	for p, ok := range map[string]bool{"vl3a": true, "a": true, "abcde": true, "abcdef": false,
		"": false, "3abc": false, "aB": false, "a-b": false, "a/b": false} {
		if err := ValidatePrefix(p); (err == nil) != ok {
			t.Errorf("ValidatePrefix(%q) = %v, want ok=%t", p, err, ok)
		}
	}
}

func TestLayout(t *testing.T) {
	y := layout{prefix: "abcde", octet: octetFor("abcde"), hosts: MaxHosts}
	seen := map[netip.Addr]string{}
	for _, n := range y.nodes() {
		if ns := y.nsName(n); len(ns) > 15 {
			t.Errorf("namespace name %q too long", ns)
		}
		for _, p := range y.ports(n) {
			for _, name := range []string{p.swEnd, p.nodeIf} {
				if len(name) > 15 {
					t.Errorf("interface name %q too long", name)
				}
			}
		}
		for _, net := range Networks() {
			a, ok := y.addr(n, net)
			if !ok {
				continue
			}
			if other, dup := seen[a.Addr()]; dup {
				t.Errorf("%s and %s share %v", n, other, a)
			}
			seen[a.Addr()] = n
		}
	}
	for in, want := range map[string]string{"h3": "h3", "host3": "h3", "abcde-h3": "h3", "storage": StorageNode} {
		if got, err := y.resolve(in); err != nil || got != want {
			t.Errorf("resolve(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"h0", "h49", "h03", "sw", "x", ""} {
		if _, err := y.resolve(bad); err == nil {
			t.Errorf("resolve(%q) succeeded", bad)
		}
	}
}

func TestRenderFaults(t *testing.T) {
	st := &state{Prefix: "vx", Octet: 20, Hosts: 3,
		Faults:     map[string]*Faults{"h2": {Isolated: true}, "h3": {StorageCut: true}, StorageNode: {Frozen: true}},
		Partitions: []Partition{{ID: 4, Group: []string{"h1"}}}}
	got := renderFaults(st)
	for _, want := range []string{
		"add table bridge vigil_vx\ndelete table bridge vigil_vx\n",
		`iifname { "h2-mgmt", "h2-stor", "h2-vm" } drop`,
		`oifname { "h3-stor" } drop`,
		`iifname { "h1-mgmt" } oifname { "h2-mgmt", "h3-mgmt" } drop comment "partition 4"`,
		`iifname { "h2-mgmt", "h3-mgmt" } oifname { "h1-mgmt" } drop comment "partition 4"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rules lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "st-stor") {
		t.Errorf("frozen storage node got network rules:\n%s", got)
	}
}

// TestPrefixInUse makes sure a lab never adopts, and its rollback never
// deletes, a namespace that someone else owns.
func TestPrefixInUse(t *testing.T) {
	requireLabEnv(t)
	prefix := testBase() + "c"
	foreign := prefix + "-h2"
	if err := ensureNetnsDir(); err != nil {
		t.Fatal(err)
	}
	if err := createNetNS(foreign); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNetNS(foreign) })
	dir := filepath.Join(t.TempDir(), "lab")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := Up(ctx, Config{Dir: dir, Prefix: prefix, Hosts: 2})
	if !errors.Is(err, ErrPrefixInUse) {
		t.Fatalf("Up = %v, want ErrPrefixInUse", err)
	}
	if _, err := netNSID(foreign); err != nil {
		t.Errorf("foreign namespace was touched: %v", err)
	}
	if err := Down(ctx, dir); err != nil {
		t.Errorf("Down: %v", err)
	}
	if _, err := netNSID(foreign); err != nil {
		t.Errorf("Down removed the foreign namespace: %v", err)
	}
	deleteNetNS(foreign)
	if left := leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// TestDownPartialState simulates a lab process that died half-way through
// Up: the state lists resources, only some of which exist.
func TestDownPartialState(t *testing.T) {
	requireLabEnv(t)
	prefix := testBase() + "d"
	dir := t.TempDir()
	st := &state{Version: stateVersion, Prefix: prefix, Octet: octetFor(prefix), Hosts: 2}
	y := st.layout()
	st.Cgroups = []string{y.cgroupParent(), y.cgroup("h1"), y.cgroup("h2")}
	st.Namespaces = []string{y.switchNS(), y.nsName("h1"), y.nsName("h2")}
	st.NFTables = []nftTable{{y.switchNS(), "bridge", y.nftTable()}}
	st.Files = []string{filepath.Join(dir, "logs", "h1-x.log")}
	ss := stateStore{dir: dir}
	if err := ss.save(st); err != nil {
		t.Fatal(err)
	}
	// Only the parent cgroup, one child and the switch namespace exist.
	if err := os.MkdirAll(y.cgroup("h1"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ensureNetnsDir(); err != nil {
		t.Fatal(err)
	}
	if err := createNetNS(y.switchNS()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sweep(prefix) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Down(ctx, dir); err != nil {
		t.Fatalf("Down: %v", err)
	}
	if left := leftovers(prefix); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
	if _, err := os.Stat(ss.path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file kept: %v", err)
	}
	if err := Down(ctx, dir); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

func TestUpTwiceSameDir(t *testing.T) {
	requireLabEnv(t)
	l := upLab(t, "e", 1)
	_, err := Up(context.Background(), Config{Dir: l.Dir(), Prefix: testBase() + "f", Hosts: 1})
	if !errors.Is(err, ErrLabExists) {
		t.Errorf("second Up = %v, want ErrLabExists", err)
	}
	if o, err := Open(l.Dir(), nil); err != nil || o.Prefix() != l.Prefix() {
		t.Errorf("Open: %v", err)
	}
}
