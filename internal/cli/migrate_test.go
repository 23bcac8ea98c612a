package cli

import (
	"strings"
	"testing"

	"github.com/vigilha/vigil/internal/api"
	"github.com/vigilha/vigil/internal/store"
)

func TestProgressLine(t *testing.T) {
	if got := progressLine(&api.Migration{Phase: "requested"}); got != "requested: waiting for the leader to plan it" {
		t.Errorf("unplanned migration: %q", got)
	}
	got := progressLine(&api.Migration{Source: "host1", Target: "host2", Phase: "migrating",
		Progress: store.MigrationProgress{Total: 100 << 20, Remaining: 25 << 20, Transferred: 75 << 20}})
	for _, want := range []string{"host1 -> host2", "migrating", "transferred 75.0 MiB", "remaining 25.0 MiB"} {
		if !strings.Contains(got, want) {
			t.Errorf("progress line %q lacks %q", got, want)
		}
	}
}
