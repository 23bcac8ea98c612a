package ha

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/vigilha/vigil/internal/etcdtest"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// blockingArbiter is the storage seen by a leader that freezes in the
// middle of a fence: Revoke blocks until the test lets it go.
type blockingArbiter struct {
	storage.Arbiter // only Heartbeats and Revoke are used by a failover pass
	mu              sync.Mutex
	revokes         []string
	entered         chan struct{}
	release         chan struct{}
}

func (a *blockingArbiter) Heartbeats(context.Context) (map[string]storage.HostHeartbeat, error) {
	// h1 is dead (no heartbeat), h2 alive.
	return map[string]storage.HostHeartbeat{"h2": {Age: 100 * time.Millisecond}}, nil
}

func (a *blockingArbiter) Revoke(_ context.Context, vm storage.VMRef, host string) error {
	a.mu.Lock()
	a.revokes = append(a.revokes, vm.Name+"@"+host)
	a.mu.Unlock()
	if a.entered != nil {
		close(a.entered)
		a.entered = nil
		<-a.release
	}
	return nil
}

func (a *blockingArbiter) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.revokes...)
}

// failoverCluster is etcd holding a VM on h1, whose lease has expired, and
// a live h2: the next HA pass fences h1 and restarts the VM on h2.
func failoverCluster(t *testing.T) (*store.Store, func(string) (*concurrency.Session, *store.Store)) {
	t.Helper()
	c := etcdtest.Start(t)
	ctx := context.Background()
	st := store.New(c)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.PutDatastore(ctx, &store.Datastore{Name: "shared", Type: store.DatastoreShared, Server: "storage:1"}))
	for _, h := range []string{"h1", "h2"} {
		must(st.PutHost(ctx, &store.Host{Name: h, Datastores: []string{"shared"},
			Capacity: store.Resources{CPUs: 8, Memory: int64(8 * spec.GiB)}}))
	}
	lease, err := c.Grant(ctx, 60)
	must(err)
	must(st.PutAlive(ctx, "h2", lease.ID, time.Now()))
	rec := &store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "vm1", UID: "u1"}, Spec: spec.VMSpec{
		CPUs: 1, Memory: 256 * spec.MiB, HA: spec.HA{Enabled: true, Priority: spec.PriorityMedium},
		Disks: []spec.Disk{{Name: "root", Datastore: "shared"}}}}, Power: store.PowerRunning}
	must(st.CreateVM(ctx, rec))
	snap, err := st.Snapshot(ctx)
	must(err)
	v := snap.VMs["vm1"]
	must(st.SetPlacement(ctx, "vm1", v.Placement, v.PlacementRev, store.Placement{Host: "h1", Epoch: 1}))
	campaign := func(name string) (*concurrency.Session, *store.Store) {
		sess, err := concurrency.NewSession(c, concurrency.WithTTL(2))
		must(err)
		el := concurrency.NewElection(sess, store.ElectionPrefix)
		must(el.Campaign(ctx, name))
		return sess, st.Guarded(el.Key(), el.Rev())
	}
	return st, campaign
}

func noGrace() Config {
	cfg := DefaultConfig()
	cfg.Grace = 0
	return cfg
}

// A leader frozen in the middle of a failover pass, and resumed after a
// new leader was elected, writes nothing more: not the fence record, not
// the placement, not an event. (In the field its process was stopped past
// its session TTL while it waited on the storage.)
func TestStaleLeaderResumedMidPassWritesNothing(t *testing.T) {
	st, campaign := failoverCluster(t)
	ctx := context.Background()
	oldSess, old := campaign("old")
	arb := &blockingArbiter{entered: make(chan struct{}), release: make(chan struct{})}
	entered := arb.entered
	c := New(old, slog.Default(), noGrace(), func(*store.Datastore) storage.Arbiter { return arb })
	snap, err := old.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.Reconcile(ctx, snap)
		done <- err
	}()
	select {
	case <-entered:
	case err := <-done:
		t.Fatalf("the pass ended without fencing h1: %v (the test proves nothing)", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the pass never reached the storage fence")
	}
	// Frozen inside the revocation: the term ends and another leader wins.
	if _, err := oldSess.Client().Revoke(ctx, oldSess.Lease()); err != nil {
		t.Fatal(err)
	}
	campaign("new")
	close(arb.release)
	err = <-done
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("the resumed pass: %v, want ErrNotLeader", err)
	}
	after, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f := after.Fences["vm1"]; f != nil {
		t.Errorf("the stale leader recorded a fence: %+v", f)
	}
	if p := after.VMs["vm1"].Placement; p.Host != "h1" || p.Epoch != 1 {
		t.Errorf("the stale leader moved the VM: %+v", p)
	}
	evs, err := st.Events(ctx, since, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		if ev.Type == store.EvVMFenced || ev.Type == store.EvRestartPlaced {
			t.Errorf("the stale leader wrote an event: %s %s", ev.Type, ev.Message)
		}
	}
}

// A leader whose term ended before it reached the fence does not revoke at
// the storage at all (a stale revocation could kill a VM that the new
// leader has just restarted on that host).
func TestStaleLeaderDoesNotRevoke(t *testing.T) {
	st, campaign := failoverCluster(t)
	ctx := context.Background()
	oldSess, old := campaign("old")
	arb := &blockingArbiter{}
	c := New(old, slog.Default(), noGrace(), func(*store.Datastore) storage.Arbiter { return arb })
	snap, err := old.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oldSess.Client().Revoke(ctx, oldSess.Lease()); err != nil {
		t.Fatal(err)
	}
	_, nw := campaign("new")
	if _, err := c.Reconcile(ctx, snap); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("the stale pass: %v, want ErrNotLeader", err)
	}
	if got := arb.calls(); len(got) != 0 {
		t.Errorf("the stale leader revoked at the storage: %v", got)
	}
	// Control: the leader in its term, with the same snapshot, does fence.
	if _, err := New(nw, slog.Default(), noGrace(), func(*store.Datastore) storage.Arbiter { return arb }).Reconcile(ctx, snap); err != nil {
		t.Fatalf("the current leader's pass: %v", err)
	}
	after, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := arb.calls(); len(got) != 1 || after.Fences["vm1"] == nil {
		t.Errorf("the current leader did not fence h1: revocations %v, fence %+v", got, after.Fences["vm1"])
	}
}
