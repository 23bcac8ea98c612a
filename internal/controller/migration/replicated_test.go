package migration

import (
	"strings"
	"testing"

	proto "github.com/vigilha/vigil/internal/protocol/migration"
	preplication "github.com/vigilha/vigil/internal/protocol/replication"
	"github.com/vigilha/vigil/internal/store"
)

// replicatedCluster makes vm1 a VM whose disk is on a replicated datastore, with
// its primary on h1 and its replica on h2 at generation 4, in state.
func replicatedCluster(t *testing.T, state preplication.DiskState, rep preplication.ReplState) *cluster {
	t.Helper()
	cl := newCluster(t, "h1", "h2", "h3")
	cl.st.AddDatastore(store.Datastore{Name: "rep", Type: store.DatastoreReplicated})
	for _, h := range []string{"h1", "h2", "h3"} {
		cl.st.AddHost(store.Host{Name: h, Datastores: []string{"shared", "local", "rep"},
			Capacity: store.Resources{CPUs: 16, Memory: 16 << 30},
			Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
	}
	cl.run("vm1", "h1", 1, func(r *store.VMRecord) { r.VM.Spec.Disks[0].Datastore = "rep" })
	if _, err := cl.st.CASReplicaSet(cl.ctx, "vm1", 0, &store.ReplicaSet{UID: "u-vm1", Primary: "h1", Peer: "h2", Generation: 4,
		Disks: map[string]*store.ReplicaDisk{"root": {State: state, Replication: rep}}}); err != nil {
		t.Fatal(err)
	}
	return cl
}

func (cl *cluster) replicas(vm string) *store.ReplicaSet {
	cl.t.Helper()
	rs, err := cl.st.GetReplicaSet(cl.ctx, vm)
	if err != nil {
		cl.t.Fatal(err)
	}
	return rs
}

// A replicated VM moves to its replica's host only, pre-copy, with the
// next generation reserved; a third host is refused, saying why.
func TestReplicatedVMMovesOnlyToItsReplica(t *testing.T) {
	cl := replicatedCluster(t, preplication.UpToDate, preplication.Established)
	p := cl.scheduled("vm1", "m1", "")
	if p.Target != "h2" || p.ReplicaGeneration != 5 || p.Postcopy || p.SharedNothing {
		t.Fatalf("plan %+v, want to h2 (the replica), generation 5, pre-copy, not shared-nothing", p)
	}
	cl.wantRefused("vm1", "m2", "h3", "can move only there")
}

// wantRefused asks to migrate vm (to "" lets placement choose) and fails
// unless the plan is refused with a reason containing why.
func (cl *cluster) wantRefused(vm, id, to, why string) {
	cl.t.Helper()
	cl.request(vm, id, to)
	cl.pass()
	if p := cl.plan(vm); p.Phase != proto.Failed || !strings.Contains(p.Error, why) {
		cl.t.Fatalf("plan %+v, want refused: %q", p, why)
	}
}

// A VM whose replica is not UpToDate does not move at all: its replica's
// host lacks writes.
func TestOutdatedReplicaRefusesMigration(t *testing.T) {
	cl := replicatedCluster(t, preplication.Outdated, preplication.Off)
	cl.wantRefused("vm1", "m1", "", "would lose writes")
}

// The cut-over moves placement and swaps the replica's roles in one step:
// the destination becomes the primary at the reserved generation and the
// source's copy the replica, still UpToDate.
func TestCutoverSwapsReplicaRoles(t *testing.T) {
	cl := replicatedCluster(t, preplication.UpToDate, preplication.Established)
	cl.scheduled("vm1", "m1", "")
	cl.targetReports("vm1", "m1", proto.TargetReady, "")
	cl.sourceReports("vm1", "m1", proto.SourceCompleted, "")
	cl.pass()
	cl.pass()
	if p := cl.placement("vm1"); p.Host != "h2" || p.Epoch != 2 {
		t.Fatalf("placement %+v, want h2 at epoch 2", p)
	}
	rs := cl.replicas("vm1")
	if rs.Primary != "h2" || rs.Peer != "h1" || rs.Generation != 5 {
		t.Fatalf("record %+v, want primary h2, replica h1, generation 5", rs)
	}
	if d := rs.Disks["root"]; d.State != preplication.UpToDate || d.Replication != preplication.Established {
		t.Fatalf("disk %+v, want UpToDate/Established after the swap", d)
	}
}

// If the replica fell behind during the migration (the source recorded
// it Outdated), the cut-over is refused: placement and the record stay,
// and the source resumes.
func TestCutoverRefusedWhenReplicaFellBehind(t *testing.T) {
	cl := replicatedCluster(t, preplication.UpToDate, preplication.Established)
	cl.scheduled("vm1", "m1", "")
	cl.targetReports("vm1", "m1", proto.TargetReady, "")
	cl.pass()
	rs := cl.replicas("vm1")
	next := rs.Clone()
	next.Disks["root"].State, next.Disks["root"].Replication, next.Disks["root"].Reason = preplication.Outdated, preplication.Off, "replica write failed"
	if _, err := cl.st.CASReplicaSet(cl.ctx, "vm1", rs.Rev, next); err != nil {
		t.Fatal(err)
	}
	cl.sourceReports("vm1", "m1", proto.SourceCompleted, "")
	cl.pass()
	cl.pass()
	cl.wantOnSource("vm1", "h1")
	if p := cl.plan("vm1"); p.Phase != proto.Failed || !strings.Contains(p.Error, "cut-over refused") {
		t.Fatalf("plan %+v, want failed: cut-over refused", p)
	}
	if rs := cl.replicas("vm1"); rs.Primary != "h1" || rs.Generation != 4 {
		t.Fatalf("record %+v, want unchanged (primary h1, generation 4)", rs)
	}
}
