package memstore

import (
	"context"
	"errors"
	"testing"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

func vmRecord(name string) store.VMRecord {
	return store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB}}, Power: store.PowerRunning}
}

// The fake keeps the rules the controllers rely on: placement CAS with
// growing epochs, status guarded by placement, the term guard, and deep
// copies in snapshots.
func TestMemstoreKeepsTheStoreRules(t *testing.T) {
	ctx := context.Background()
	m := New()
	m.AddVM(vmRecord("vm1"))
	snap, err := m.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := snap.VMs["vm1"]
	if v == nil || v.Record.UID() != "u-vm1" {
		t.Fatalf("snapshot lost the VM: %+v", v)
	}
	if err := m.SetPlacement(ctx, "vm1", v.Placement, v.PlacementRev, store.Placement{Host: "h1", Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if err := m.SetPlacement(ctx, "vm1", v.Placement, v.PlacementRev, store.Placement{Host: "h2", Epoch: 1}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a stale placement CAS: %v, want ErrConflict", err)
	}
	if err := m.PutStatus(ctx, "vm1", v.PlacementRev, &store.VMStatus{Host: "h1"}); !errors.Is(err, store.ErrConflict) {
		t.Errorf("a status for an older placement: %v, want ErrConflict", err)
	}
	snap.VMs["vm1"].Record.Power = store.PowerStopped // a snapshot is a copy
	if m.VM("vm1").Record.Power != store.PowerRunning {
		t.Error("changing a snapshot changed the store")
	}
	m.EndTerm()
	cur := m.VM("vm1")
	if err := m.SetPlacement(ctx, "vm1", cur.Placement, cur.PlacementRev, store.Placement{Host: "h2", Epoch: 2}); !errors.Is(err, store.ErrNotLeader) {
		t.Errorf("a write after the term: %v, want ErrNotLeader", err)
	}
}
