package store

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/spec"
)

// A leader whose term ended (its session lapsed: in the field, its process
// was frozen past the session TTL and resumed mid-pass, with the snapshot it
// read before) can write nothing, while the new leader can.
func TestGuardedWritesFailAfterTheTermEnds(t *testing.T) {
	c := etcdtest.Start(t)
	ctx := context.Background()
	st := New(c)
	rec := &VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "vm1"}, Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB}}, Power: PowerRunning}
	if err := st.CreateVM(ctx, rec); err != nil {
		t.Fatal(err)
	}
	campaign := func(name string) (*concurrency.Session, *concurrency.Election) {
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(2))
		if err != nil {
			t.Fatal(err)
		}
		el := concurrency.NewElection(sess, ElectionPrefix)
		if err := el.Campaign(ctx, name); err != nil {
			t.Fatal(err)
		}
		return sess, el
	}
	oldSess, oldEl := campaign("old")
	old := st.Guarded(oldEl.Key(), oldEl.Rev())
	snap, err := old.Snapshot(ctx) // the stale leader's snapshot
	if err != nil {
		t.Fatal(err)
	}
	v := snap.VMs["vm1"]
	if err := old.SetPlacement(ctx, "vm1", v.Placement, v.PlacementRev, Placement{Host: "h1", Epoch: 1}); err != nil {
		t.Fatalf("the leader's own write in its term: %v", err)
	}
	// The term ends (the session lease is gone, as when it lapses), and a
	// new leader is elected.
	if _, err := c.Revoke(ctx, oldSess.Lease()); err != nil {
		t.Fatal(err)
	}
	_, newEl := campaign("new")
	nw := st.Guarded(newEl.Key(), newEl.Rev())
	snap, _ = old.Snapshot(ctx)
	v = snap.VMs["vm1"]
	writes := map[string]func(*Store) error{
		"placement": func(s *Store) error {
			return s.SetPlacement(ctx, "vm1", v.Placement, v.PlacementRev, Placement{Host: "h2", Epoch: 2})
		},
		"fence record":   func(s *Store) error { return s.PutFence(ctx, "vm1", &Fence{Host: "h1", Epoch: 1}) },
		"migration plan": func(s *Store) error { return s.PutMigrationPlan(ctx, "vm1", 0, &MigrationPlan{ID: "m1"}) },
		"request":        func(s *Store) error { return s.DeleteRequest(ctx, "vm1") },
		"vm record":      func(s *Store) error { return s.UpdateVMRecord(ctx, v.Record, v.RecordRev) },
	}
	for what, w := range writes {
		if err := w(old); !errors.Is(err, ErrNotLeader) {
			t.Errorf("%s by the old leader after its term: %v, want ErrNotLeader", what, err)
		}
	}
	if err := writes["placement"](nw); err != nil {
		t.Errorf("placement by the new leader: %v", err)
	}
	snap, _ = st.Snapshot(ctx)
	if p := snap.VMs["vm1"].Placement; p.Host != "h2" || p.Epoch != 2 {
		t.Errorf("placement %+v, want the new leader's h2/2", p)
	}
}
