package modules

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// debianGraph is the dependency graph of the wanted modules on Debian 12's
// 6.1 kernel, with depends= lists in the order modinfo has them.
var debianGraph = map[string][]string{
	"virtio_pci":            {"virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio"},
	"virtio":                {"virtio_ring"},
	"virtio_ring":           nil,
	"virtio_pci_modern_dev": nil,
	"virtio_pci_legacy_dev": nil,
	"virtio_net":            {"virtio_ring", "virtio", "net_failover"},
	"net_failover":          {"failover"},
	"failover":              nil,
	"virtio_blk":            {"virtio", "virtio_ring"},
	"virtio_console":        {"virtio", "virtio_ring"},
	"button":                nil,
	"evdev":                 nil,
}

func graphDeps(g map[string][]string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		d, ok := g[name]
		if !ok {
			return nil, fmt.Errorf("no module %s", name)
		}
		return d, nil
	}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		graph   map[string][]string
		wanted  []string
		want    []string
		wantErr string
	}{
		{
			name:   "debian guest set",
			graph:  debianGraph,
			wanted: []string{"virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "button", "evdev"},
			want: []string{"virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
				"failover", "net_failover", "virtio_net", "virtio_blk", "virtio_console", "button", "evdev"},
		},
		{
			name:   "duplicates and dashes",
			graph:  map[string][]string{"a_b": {"c", "c"}, "c": nil},
			wanted: []string{"a-b", "c", "a_b"},
			want:   []string{"c", "a_b"},
		},
		{
			name:   "diamond",
			graph:  map[string][]string{"top": {"r", "l"}, "l": {"base"}, "r": {"base"}, "base": nil},
			wanted: []string{"top"},
			want:   []string{"base", "l", "r", "top"},
		},
		{name: "empty", graph: nil, wanted: nil, want: nil},
		{
			name:    "cycle",
			graph:   map[string][]string{"a": {"b"}, "b": {"c"}, "c": {"a"}},
			wanted:  []string{"a"},
			wantErr: "cycle: a -> b -> c -> a",
		},
		{
			name:    "missing dependency",
			graph:   map[string][]string{"a": {"ghost"}},
			wanted:  []string{"a"},
			wantErr: "no module ghost",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Resolve(tt.wanted, graphDeps(tt.graph))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Resolve error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Resolve = %v\nwant      %v", got, tt.want)
			}
			checkOrder(t, got, tt.graph)
		})
	}
}

// checkOrder asserts the topological property itself, independent of the
// tie-breaking the expected lists encode.
func checkOrder(t *testing.T, order []string, g map[string][]string) {
	t.Helper()
	pos := map[string]int{}
	for i, n := range order {
		pos[n] = i
	}
	for _, n := range order {
		for _, d := range g[n] {
			if pos[Normalize(d)] >= pos[n] {
				t.Errorf("%s comes before its dependency %s", n, d)
			}
		}
	}
}

func TestParseModinfo(t *testing.T) {
	tests := []struct {
		name    string
		blob    string
		want    []string
		wantErr bool
	}{
		{"deps", "license=GPL\x00depends=virtio_ring,virtio,net-failover\x00vermagic=6.1\x00", []string{"virtio_ring", "virtio", "net_failover"}, false},
		{"empty", "alias=x\x00depends=\x00", nil, false},
		{"none", "license=GPL\x00", nil, true},
		{"twice", "depends=a\x00depends=b\x00", nil, true},
		{"not at entry start", "xdepends=a\x00depends=b", []string{"b"}, false},
	}
	for _, tt := range tests {
		got, err := ParseModinfo([]byte(tt.blob))
		if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s: ParseModinfo = %v, %v; want %v, err %v", tt.name, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNormalize(t *testing.T) {
	for in, want := range map[string]string{
		"virtio-rng.ko":        "virtio_rng",
		"a/b/virtio_net.ko.xz": "virtio_net",
		"evdev":                "evdev",
	} {
		if got := Normalize(in); got != want {
			t.Errorf("Normalize(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestTree builds a fake lib/modules/<ver> whose "modules" are raw modinfo
// blobs (not ELF), which exercises the byte-scan fallback.
func TestTree(t *testing.T) {
	root := t.TempDir()
	files := map[string]string{
		"kernel/drivers/a.ko":          "depends=b-dash\x00",
		"kernel/drivers/sub/b-dash.ko": "depends=\x00",
		"kernel/drivers/z.ko.xz":       "compressed",
	}
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte("\x7fJUNK\x00"+c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "modules.builtin"), []byte("kernel/drivers/in-core.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree, err := Open(root)
	if err != nil {
		t.Fatal(err)
	}
	if tree.Len() != 3 {
		t.Errorf("Len = %d, want 3", tree.Len())
	}
	order, builtin, err := tree.Resolve([]string{"a", "in_core"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(order, []string{"b_dash", "a"}) || !reflect.DeepEqual(builtin, []string{"in_core"}) {
		t.Errorf("Resolve = %v, builtin %v", order, builtin)
	}
	if _, _, err := tree.Resolve([]string{"z"}); err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("compressed module error = %v", err)
	}
	if _, _, err := tree.Resolve([]string{"nope"}); err == nil {
		t.Error("resolving a missing module succeeded")
	}
}
