package cli

import (
	"strings"
	"testing"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
)

func TestProgressLine(t *testing.T) {
	if got := progressLine(&v1.Migration{Phase: "requested"}); got != "requested: waiting for the leader to plan it" {
		t.Errorf("unplanned migration: %q", got)
	}
	got := progressLine(&v1.Migration{Source: "host1", Target: "host2", Phase: "migrating",
		Progress: v1.MigrationProgress{Total: 100 << 20, Remaining: 25 << 20, Transferred: 75 << 20}})
	for _, want := range []string{"host1 -> host2", "migrating", "transferred 75.0 MiB", "remaining 25.0 MiB"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
}
