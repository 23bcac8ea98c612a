package ha

import (
	"log/slog"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// TestBusyClass covers the priority gate, including a restarted VM that
// was deleted meanwhile (once a nil dereference that crashed the leader).
func TestBusyClass(t *testing.T) {
	c := New(nil, slog.Default(), DefaultConfig(), nil)
	now := time.Now()
	vm := func(prio, state string) *store.VMState {
		return &store.VMState{
			Record:    &store.VMRecord{VM: spec.VM{Spec: spec.VMSpec{HA: spec.HA{Enabled: true, Priority: prio}}}},
			Placement: store.Placement{Host: "h2", Epoch: 2},
			Status:    &store.VMStatus{Host: "h2", Epoch: 2, State: state},
		}
	}
	snap := &store.Snapshot{VMs: map[string]*store.VMState{
		"hi":  vm(spec.PriorityHigh, store.StateStarting),
		"med": vm(spec.PriorityMedium, store.StateRunning),
	}}
	c.placedAt = map[string]time.Time{"hi": now, "med": now, "gone": now, "old": now.Add(-time.Hour)}
	snap.VMs["old"] = vm(spec.PriorityHigh, store.StateStarting)
	if got := c.busyClass(snap, now); got != spec.PriorityRank(spec.PriorityHigh) {
		t.Errorf("busyClass = %d, want the high class (hi is placed, not yet running)", got)
	}
	for _, gone := range []string{"gone", "med", "old"} {
		if _, ok := c.placedAt[gone]; ok {
			t.Errorf("%s should be forgotten (deleted, running, or past the class timeout)", gone)
		}
	}
	delete(c.placedAt, "hi")
	if got := c.busyClass(snap, now); got != -1 {
		t.Errorf("busyClass = %d with nothing in flight, want -1", got)
	}
}
