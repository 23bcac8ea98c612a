package replication

import (
	"context"
	"log/slog"
	"testing"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

func cluster(t *testing.T, hosts ...string) (*memstore.Store, *Controller, *time.Time) {
	st := memstore.New()
	st.AddDatastore(store.Datastore{Name: "replicated", Type: store.DatastoreReplicated})
	for _, h := range hosts {
		st.AddHost(store.Host{Name: h, Datastores: []string{"replicated"}, Capacity: store.Resources{CPUs: 4, Memory: int64(4 * spec.GiB)},
			Fencing: store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
	}
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	c := New(st, slog.New(slog.DiscardHandler))
	c.now = func() time.Time { return now }
	rec := store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "rep", UID: "u1"}, Spec: spec.VMSpec{CPUs: 1, Memory: spec.GiB,
		Disks: []spec.Disk{{Name: "d", Size: spec.GiB, Format: "raw", Datastore: "replicated"}},
		HA:    spec.HA{Enabled: true, Priority: spec.PriorityMedium}}}, Power: store.PowerRunning}
	st.AddVM(rec)
	st.Place("rep", store.Placement{Host: "h1", Epoch: 1})
	if _, err := replicated.Grant(context.Background(), st, storage.VMRef{Name: "rep", UID: "u1"}, "h1", []string{"d"}, now); err != nil {
		t.Fatal(err)
	}
	return st, c, &now
}

func pass(t *testing.T, st *memstore.Store, c *Controller) {
	t.Helper()
	snap, err := st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reconcile(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
}

func peerOf(t *testing.T, st *memstore.Store) *store.ReplicaSet {
	t.Helper()
	rs, err := st.GetReplicaSet(context.Background(), "rep")
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// The peer is another host than the primary, and it moves to a third one
// only after it has been away longer than the timeout, and only while the
// primary is alive (the away peer may hold the only other copy).
func TestPeerChoiceAndTimeout(t *testing.T) {
	st, c, now := cluster(t, "h1", "h2", "h3")
	st.SetAlive("h3", false)
	pass(t, st, c)
	if rs := peerOf(t, st); rs.Peer != "h2" {
		t.Fatalf("peer %q, want h2 (h1 is the primary, h3 is down)", rs.Peer)
	}
	st.SetAlive("h3", true)
	st.SetAlive("h2", false)
	pass(t, st, c)
	*now = now.Add(c.PeerTimeout - time.Second)
	pass(t, st, c)
	if rs := peerOf(t, st); rs.Peer != "h2" {
		t.Fatalf("peer moved to %q before the timeout", rs.Peer)
	}
	*now = now.Add(2 * time.Second)
	st.SetAlive("h1", false)
	pass(t, st, c)
	if rs := peerOf(t, st); rs.Peer != "h2" {
		t.Fatalf("peer moved to %q while the primary is down too", rs.Peer)
	}
	st.SetAlive("h1", true)
	pass(t, st, c)
	rs := peerOf(t, st)
	if rs.Peer != "h3" {
		t.Fatalf("peer %q after the timeout, want h3", rs.Peer)
	}
	if d := rs.Disks["d"]; d.State != preplication.Outdated {
		t.Fatalf("a new peer's copy is %s, want Outdated until synced", d.State)
	}
}

// A peer in maintenance gives its replica up to another host, at once;
// with no other host able to keep it, it stays.
func TestPeerInMaintenanceMoves(t *testing.T) {
	st, c, now := cluster(t, "h1", "h2")
	pass(t, st, c)
	if err := st.SetMaintenance(context.Background(), "h2", true, store.Maintenance{Since: *now}); err != nil {
		t.Fatal(err)
	}
	pass(t, st, c)
	if rs := peerOf(t, st); rs.Peer != "h2" {
		t.Fatalf("peer moved to %q with no other host to keep it", rs.Peer)
	}
	st.AddHost(store.Host{Name: "h3", Datastores: []string{"replicated"}, Capacity: store.Resources{CPUs: 4, Memory: int64(4 * spec.GiB)},
		Fencing: store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
	pass(t, st, c)
	rs := peerOf(t, st)
	if rs.Peer != "h3" {
		t.Fatalf("peer %q, want h3: h2 is in maintenance", rs.Peer)
	}
	if d := rs.Disks["d"]; d.State != preplication.Outdated {
		t.Fatalf("the new peer's copy is %s, want Outdated until synced", d.State)
	}
}
