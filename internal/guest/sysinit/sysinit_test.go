package sysinit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestReadBootID(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		content string
		want    string
		wantErr bool
	}{
		{"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n", "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", false},
		{"\n", "", true},
	}
	for i, tt := range tests {
		p := filepath.Join(dir, string(rune('a'+i)))
		if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := ReadBootID(p)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ReadBootID(%q) = %q, %v", tt.content, got, err)
		}
	}
	if _, err := ReadBootID(filepath.Join(dir, "missing")); err == nil {
		t.Error("ReadBootID of a missing file succeeded")
	}
}

func TestHostFacts(t *testing.T) {
	if Uptime() <= 0 {
		t.Error("Uptime is not positive")
	}
	if n, err := MemAvailable(); err != nil || n <= 0 {
		t.Errorf("MemAvailable = %d, %v", n, err)
	}
	if _, err := ReadBootID(BootIDPath); err != nil {
		t.Error(err)
	}
}
