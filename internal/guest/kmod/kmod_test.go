package kmod

import (
	"context"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func TestParseOrder(t *testing.T) {
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", nil, false},
		{"virtio_ring\nvirtio\n\n# comment\n  evdev  \n", []string{"virtio_ring", "virtio", "evdev"}, false},
		{"a b\n", nil, true},
		{"../x\n", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseOrder(strings.NewReader(tt.in))
		if (err != nil) != tt.wantErr || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseOrder(%q) = %q, %v; want %q, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

// TestLoadMissing checks that a missing module is reported and does not stop
// the rest; loading real modules needs a guest kernel and root.
func TestLoadMissing(t *testing.T) {
	err := Load(context.Background(), []string{"nope1", "nope2"}, t.TempDir(), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "nope1") || !strings.Contains(err.Error(), "nope2") {
		t.Fatalf("Load error = %v, want both modules named", err)
	}
}
