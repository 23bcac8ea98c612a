package cpuhp

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// An offline CPU is brought online; online ones and cpu0 (which has no
// online file) are left alone.
func TestOnlineAll(t *testing.T) {
	sys := t.TempDir()
	for cpu, state := range map[string]string{"cpu0": "", "cpu1": "1\n", "cpu2": "0\n"} {
		d := filepath.Join(sys, cpu)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if state != "" {
			if err := os.WriteFile(filepath.Join(d, "online"), []byte(state), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if n := OnlineAll(sys, slog.Default()); n != 1 {
		t.Fatalf("onlined %d CPUs, want 1", n)
	}
	b, _ := os.ReadFile(filepath.Join(sys, "cpu2", "online"))
	if string(b) != "1" {
		t.Fatalf("cpu2 online = %q", b)
	}
	if n := OnlineAll(sys, slog.Default()); n != 0 {
		t.Fatalf("second pass onlined %d", n)
	}
}
