package ha

import (
	"context"
	"testing"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/storage/replicated"
	"github.com/vigilha/vigil/internal/store"
)

// repCluster is a cluster whose VM "rep" keeps its disk on a replicated
// datastore: primary h1, replica on h3.
func repCluster(t *testing.T, state preplication.DiskState) *cluster {
	cl := newCluster(t, "h1", "h2", "h3")
	cl.st.AddDatastore(store.Datastore{Name: "replicated", Type: store.DatastoreReplicated})
	for _, h := range []string{"h1", "h2", "h3"} {
		cl.st.AddHost(store.Host{Name: h, Datastores: []string{"shared", "replicated"},
			Capacity: store.Resources{CPUs: 16, Memory: int64(16 * spec.GiB)},
			Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
	}
	rec := haVM("rep", spec.PriorityMedium, func(r *store.VMRecord) { r.VM.Spec.Disks[0].Datastore = "replicated" })
	cl.run(rec, "h1")
	ctx := context.Background()
	ref := storage.VMRef{Name: "rep", UID: rec.UID()}
	if _, err := replicated.Grant(ctx, cl.st, ref, "h1", []string{"root"}, cl.now); err != nil {
		t.Fatal(err)
	}
	if _, err := replicated.SetPeer(ctx, cl.st, "rep", "h3", cl.now); err != nil {
		t.Fatal(err)
	}
	if _, err := replicated.Set(ctx, cl.st, "rep", "h1", 1, cl.now, replicated.Transition{Disk: "root", State: state, Replication: preplication.Off}); err != nil {
		t.Fatal(err)
	}
	return cl
}

// A dead primary's VM restarts on its replica's host, after the fence has
// moved the generation on (the old primary can no longer record the
// replica Outdated and go on alone).
func TestReplicatedVMRestartsOnItsReplica(t *testing.T) {
	cl := repCluster(t, preplication.UpToDate)
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	cl.wantOn("rep", "h3")
	rs, err := cl.st.GetReplicaSet(context.Background(), "rep")
	if err != nil {
		t.Fatal(err)
	}
	if rs.Generation != 2 {
		t.Errorf("generation %d after the fence, want 2", rs.Generation)
	}
}

// An Outdated replica is never promoted by HA: the VM waits, an alarm says
// why, and the operator's override lets it start there.
func TestOutdatedReplicaBlocksUntilOverride(t *testing.T) {
	cl := repCluster(t, preplication.Outdated)
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	cl.advance(time.Second)
	cl.pass()
	if p := cl.placement("rep"); p.Host != "h1" {
		t.Fatalf("placed on %s from an Outdated replica", p.Host)
	}
	if n := cl.countEvents("rep", EvReplicaBlocked); n != 1 {
		t.Fatalf("%d replica-blocked alarms, want 1", n)
	}
	if _, err := replicated.Override(context.Background(), cl.st, "rep", "test", cl.now); err != nil {
		t.Fatal(err)
	}
	cl.pass()
	cl.wantOn("rep", "h3")
}

// A replicated VM whose start failed on its replica's host, while its
// primary's host is still down, is tried there again: no other host holds
// a copy, and avoiding the one that does would strand it until the dead
// host came back (seen in the lab: a transient etcd error failed a start).
func TestFailedStartOnOnlyCopyIsRetriedThere(t *testing.T) {
	cl := repCluster(t, preplication.UpToDate)
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	cl.wantOn("rep", "h3")
	cl.report("rep", store.StateFailed, "start-failed")
	cl.pass()
	if p := cl.placement("rep"); p.Host != "h3" || !p.Evict {
		t.Fatalf("placement %+v, want h3 asked to stop it", p)
	}
	cl.report("rep", store.StateStopped, "evicted")
	cl.pass()
	cl.wantOn("rep", "h3")
	if p := cl.placement("rep"); p.Evict || p.Epoch < 3 {
		t.Fatalf("placement %+v, want a new restart placement on h3", p)
	}
}
