package memhp

import (
	"os"
	"path/filepath"
	"testing"
)

func TestAutoOnlineSetsMovable(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "auto_online_blocks")
	if err := os.WriteFile(f, []byte("offline\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := AutoOnline(dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(f); string(b) != "online_movable" {
		t.Fatalf("auto_online_blocks %q, want online_movable", b)
	}
	if err := AutoOnline(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("no error for a kernel without memory hot-plug")
	}
}
