package migration

import (
	"errors"
	"strings"
	"testing"
	"time"

	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/store"
)

// A migration request becomes a scheduled plan: a live target other than
// the source (the best one placement finds), the epoch it starts from,
// memory-only over shared storage with post-copy allowed. Planning moves
// nothing.
func TestMigrationRequestGetsPlanWithValidTarget(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.addHost("h3", 64) // the emptiest
	cl.run("vm1", "h1", 4)
	cl.request("vm1", "m1", "")
	cl.pass()
	p := cl.plan("vm1")
	if p.ID != "m1" || p.Source != "h1" || p.Target != "h3" || p.Epoch != 1 || p.Phase != proto.Scheduled {
		t.Errorf("plan %+v, want m1 h1 -> h3 from epoch 1, scheduled", p)
	}
	if p.SharedNothing || !p.Postcopy {
		t.Errorf("plan %+v, want shared storage with post-copy allowed", p)
	}
	cl.wantOnSource("vm1", "h1")
	if n := cl.countEvents("vm1", proto.EvScheduled); n != 1 {
		t.Errorf("%d migration.scheduled events, want 1", n)
	}
}

// Disks on a host-local datastore are mirrored (shared-nothing), which
// rules post-copy out; a VM that disallows post-copy does not get it.
func TestMigrationModeFollowsDisksAndPostcopySetting(t *testing.T) {
	no := false
	for _, tc := range []struct {
		name               string
		edit               func(*store.VMRecord)
		sharedNothing, pcp bool
	}{
		{"shared disk", func(*store.VMRecord) {}, false, true},
		{"local disk", func(r *store.VMRecord) { r.VM.Spec.Disks[0].Datastore = "local" }, true, false},
		{"post-copy disallowed", func(r *store.VMRecord) { r.VM.Spec.Migration.AllowPostcopy = &no }, false, false},
	} {
		cl := newCluster(t, "h1", "h2")
		cl.run("vm1", "h1", 1, tc.edit)
		cl.request("vm1", "m1", "")
		cl.pass()
		p := cl.plan("vm1")
		if p.Phase != proto.Scheduled || p.Target != "h2" || p.SharedNothing != tc.sharedNothing || p.Postcopy != tc.pcp {
			t.Errorf("%s: plan %+v, want scheduled to h2, shared-nothing %t, post-copy %t", tc.name, p, tc.sharedNothing, tc.pcp)
		}
	}
}

// A requested target that cannot take the VM refuses the migration with
// the reason, and the VM stays where it is.
func TestMigrationTargetRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, to, want string
		setup          func(*cluster)
	}{
		{"the source itself", "h1", "already runs on h1", nil},
		{"an unknown host", "h9", `no host named "h9"`, nil},
		{"a host in maintenance", "h2", "maintenance mode", func(cl *cluster) { cl.maintenance("h2") }},
		{"a host that is down", "h2", "host is down", func(cl *cluster) { cl.st.SetAlive("h2", false) }},
		{"a host without room", "h2", "memory", func(cl *cluster) { cl.run("hog", "h2", 14) }},
		{"no host at all with room", "", "memory", func(cl *cluster) { cl.run("hog", "h2", 14) }},
	} {
		cl := newCluster(t, "h1", "h2")
		cl.run("vm1", "h1", 4)
		if tc.setup != nil {
			tc.setup(cl)
		}
		cl.request("vm1", "m1", tc.to)
		cl.pass()
		p := cl.plan("vm1")
		if p.Phase != proto.Failed || !strings.Contains(p.Error, tc.want) || p.FinishedAt.IsZero() {
			t.Errorf("%s: plan %+v, want failed with %q", tc.name, p, tc.want)
		}
		cl.wantOnSource("vm1", "h1")
		if n := cl.countEvents("vm1", proto.EvFailed); n != 1 {
			t.Errorf("%s: %d migration.failed events, want 1", tc.name, n)
		}
	}
}

// A VM that is not running on a live host, or that HA is moving, is not
// migrated.
func TestMigrationRefusedForVMNotRunningOnLiveSource(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		setup      func(*cluster)
	}{
		{"stopped", "not running", func(cl *cluster) {
			cl.st.SetStatus("vm1", store.VMStatus{State: store.StateStopped, Host: "h1", Epoch: 1})
		}},
		{"status of an older placement", "not running", func(cl *cluster) {
			cl.st.Place("vm1", store.Placement{Host: "h1", Epoch: 2})
		}},
		{"being evicted by HA", "being moved by HA", func(cl *cluster) {
			cl.st.Place("vm1", store.Placement{Host: "h1", Epoch: 1, Evict: true})
		}},
		{"source host down", "h1 is down", func(cl *cluster) { cl.st.SetAlive("h1", false) }},
	} {
		cl := newCluster(t, "h1", "h2")
		cl.run("vm1", "h1", 1)
		tc.setup(cl)
		before := cl.placement("vm1")
		cl.request("vm1", "m1", "")
		cl.pass()
		if p := cl.plan("vm1"); p.Phase != proto.Failed || !strings.Contains(p.Error, tc.want) {
			t.Errorf("%s: plan %+v, want failed with %q", tc.name, p, tc.want)
		}
		if p := cl.placement("vm1"); p != before {
			t.Errorf("%s: placement moved %+v -> %+v", tc.name, before, p)
		}
	}
}

// The cut-over (placement to the target at epoch + 1) happens only when
// the source reports, for this migration, that the destination holds the
// whole state; the destination being ready, the source copying, or a
// report of an older migration flip nothing.
func TestCutoverOnlyWhenSourceAwaitsIt(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run("vm1", "h1", 1)
	cl.scheduled("vm1", "m2", "h2")

	cl.targetReports("vm1", "m2", proto.TargetReady, "")
	cl.pass()
	if p := cl.plan("vm1"); p.Phase != proto.Running {
		t.Fatalf("destination ready: plan phase %s, want %s", p.Phase, proto.Running)
	}
	cl.wantOnSource("vm1", "h1")

	cl.sourceReports("vm1", "m2", proto.SourcePrecopy, "")
	cl.pass()
	cl.wantOnSource("vm1", "h1")

	cl.sourceReports("vm1", "m1", proto.SourceCompleted, "") // an older migration's report
	cl.pass()
	cl.wantOnSource("vm1", "h1")
	if n := cl.countEvents("vm1", proto.EvSwitchover); n != 0 {
		t.Fatalf("%d switchover events before the source's word", n)
	}

	cl.sourceReports("vm1", "m2", proto.SourceCompleted, "")
	cl.pass()
	if p := cl.placement("vm1"); p.Host != "h2" || p.Epoch != 2 || p.Evict {
		t.Errorf("after the cut-over: placement %+v, want h2 at epoch 2", p)
	}
	if p := cl.plan("vm1"); p.Phase != proto.Switchover {
		t.Errorf("after the cut-over: plan phase %s, want %s", p.Phase, proto.Switchover)
	}
	if n := cl.countEvents("vm1", proto.EvSwitchover); n != 1 {
		t.Errorf("%d switchover events, want 1", n)
	}
}

// After the cut-over the migration completes once the destination reports
// the VM resumed, with the downtime in the event.
func TestMigrationCompletesWhenDestinationResumes(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run("vm1", "h1", 1)
	cl.scheduled("vm1", "m1", "h2")
	cl.targetReports("vm1", "m1", proto.TargetReady, "")
	cl.sourceReports("vm1", "m1", proto.SourceCompleted, "")
	cl.pass() // -> migrating, then the flip on the next pass
	cl.pass()
	if p := cl.plan("vm1"); p.Phase != proto.Switchover {
		t.Fatalf("plan phase %s, want %s", p.Phase, proto.Switchover)
	}
	cl.pass()
	if p := cl.plan("vm1"); p.Phase != proto.Switchover {
		t.Fatalf("completed before the destination resumed: %s", p.Phase)
	}
	cl.targetReports("vm1", "m1", proto.TargetResumed, "")
	cl.pass()
	p := cl.plan("vm1")
	if p.Phase != proto.Completed || p.FinishedAt.IsZero() || !strings.Contains(p.Error, "downtime 42 ms") {
		t.Errorf("plan %+v, want completed with the downtime", p)
	}
	if q := cl.placement("vm1"); q.Host != "h2" || q.Epoch != 2 {
		t.Errorf("placement %+v, want h2 at epoch 2", q)
	}
	if n := cl.countEvents("vm1", proto.EvCompleted); n != 1 {
		t.Errorf("%d migration.completed events, want 1", n)
	}
}

// A migration that fails or is cancelled before the cut-over ends with
// the VM where it was: placement on the source, same epoch.
func TestFailedMigrationLeavesVMOnSource(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fail  func(*cluster)
		phase proto.PlanPhase
	}{
		{"the source failed", func(cl *cluster) { cl.sourceReports("vm1", "m1", proto.SourceFailed, "qemu: boom") }, proto.Failed},
		{"the source aborted (stall)", func(cl *cluster) { cl.sourceReports("vm1", "m1", proto.SourceCancelled, "did not converge") }, proto.Cancelled},
		{"the destination failed", func(cl *cluster) { cl.targetReports("vm1", "m1", proto.TargetFailed, "no image") }, proto.Failed},
		{"the destination host died", func(cl *cluster) { cl.st.SetAlive("h2", false) }, proto.Failed},
		{"cancelled while copying", func(cl *cluster) {
			if err := cl.st.PutMigrationRequest(cl.ctx, "vm1", &store.MigrationRequest{ID: "m1", Cancel: true}); err != nil {
				t.Fatal(err)
			}
		}, proto.Cancelled},
	} {
		cl := newCluster(t, "h1", "h2")
		cl.run("vm1", "h1", 1)
		cl.scheduled("vm1", "m1", "h2")
		cl.targetReports("vm1", "m1", proto.TargetReady, "")
		cl.pass()
		cl.sourceReports("vm1", "m1", proto.SourcePrecopy, "")
		tc.fail(cl)
		cl.pass()
		p := cl.plan("vm1")
		if p.Phase != tc.phase || p.FinishedAt.IsZero() {
			t.Errorf("%s: plan %+v, want %s", tc.name, p, tc.phase)
		}
		cl.wantOnSource("vm1", "h1")
		if n := cl.countEvents("vm1", proto.EventFor(tc.phase)); n != 1 {
			t.Errorf("%s: %d %s events, want 1", tc.name, n, proto.EventFor(tc.phase))
		}
	}
}

// A stale leader cannot cut over: the flip fails with ErrNotLeader and the
// VM stays on the source.
func TestStaleLeaderDoesNotCutOver(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run("vm1", "h1", 1)
	cl.scheduled("vm1", "m1", "h2")
	cl.targetReports("vm1", "m1", proto.TargetReady, "")
	cl.pass()
	cl.sourceReports("vm1", "m1", proto.SourceCompleted, "")
	cl.st.EndTerm()
	if err := cl.tryPass(); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("the stale pass: %v, want ErrNotLeader", err)
	}
	cl.wantOnSource("vm1", "h1")
	if p := cl.plan("vm1"); p.Phase != proto.Running {
		t.Errorf("plan phase %s, want still %s", p.Phase, proto.Running)
	}
	if n := cl.countEvents("vm1", proto.EvSwitchover); n != 0 {
		t.Error("the stale leader announced a cut-over")
	}
}

// Migrations planned one after the other see each other's targets: two
// VMs that each fill most of a host go to different hosts.
func TestConcurrentMigrationsDoNotOvercommitTarget(t *testing.T) {
	cl := newCluster(t, "h2", "h3")
	cl.addHost("h1", 32)
	cl.run("a", "h1", 10)
	cl.run("b", "h1", 10)
	cl.request("a", "ma", "")
	cl.request("b", "mb", "")
	cl.pass()
	if m := cl.migration("b"); m.Plan != nil {
		t.Errorf("two plans in one pass: b %+v", m.Plan)
	}
	cl.pass()
	pa, pb := cl.plan("a"), cl.plan("b")
	if pa.Phase != proto.Scheduled || pb.Phase != proto.Scheduled || pa.Target == pb.Target {
		t.Errorf("plans a %+v, b %+v: want both scheduled, to different hosts (16 GiB each)", pa, pb)
	}
}

// At most MaxOutboundPerHost migrations leave one host at once; the next
// one is queued and starts when a slot frees.
func TestOutboundLimitPerHostQueues(t *testing.T) {
	cl := newCluster(t, "h1")
	cl.addHost("h2", 64)
	vms := []string{"a", "b", "c"}
	for _, vm := range vms {
		cl.run(vm, "h1", 1)
		cl.request(vm, "m-"+vm, "")
	}
	for range vms {
		cl.pass()
	}
	for i, vm := range vms {
		want := proto.Scheduled
		if i >= MaxOutboundPerHost {
			want = proto.Queued
		}
		if p := cl.plan(vm); p.Phase != want {
			t.Errorf("%s: phase %s, want %s", vm, p.Phase, want)
		}
	}
	cl.pass()
	if p := cl.plan("c"); p.Phase != proto.Queued {
		t.Fatalf("c: phase %s with no slot free, want queued", p.Phase)
	}

	cl.sourceReports("a", "m-a", proto.SourceFailed, "boom")
	cl.pass() // a ends
	cl.pass() // c takes its slot
	if p := cl.plan("c"); p.Phase != proto.Scheduled {
		t.Errorf("c: phase %s after a slot freed, want scheduled", p.Phase)
	}
}

// At most MaxPerCluster migrations run at once in the cluster, whatever
// their sources.
func TestClusterLimitQueues(t *testing.T) {
	cl := newCluster(t, "h1", "h2", "h3")
	cl.addHost("t1", 64)
	cl.addHost("t2", 64)
	vms := []string{"a", "b", "c", "d", "e", "f"}
	for i, vm := range vms {
		cl.run(vm, []string{"h1", "h2", "h3"}[i/2], 1) // two per source: no source is at its limit
		cl.request(vm, "m-"+vm, "")
	}
	for range vms {
		cl.pass()
	}
	scheduled, queued := 0, 0
	for _, vm := range vms {
		switch cl.plan(vm).Phase {
		case proto.Scheduled:
			scheduled++
		case proto.Queued:
			queued++
		}
	}
	if scheduled != MaxPerCluster || queued != len(vms)-MaxPerCluster {
		t.Errorf("%d scheduled, %d queued; want %d and %d", scheduled, queued, MaxPerCluster, len(vms)-MaxPerCluster)
	}
}

// Evacuating a host in maintenance asks for a migration of every VM that
// runs there (none for a stopped one or a VM elsewhere), and the plans
// take them off the host.
func TestEvacuationPlansMigrationsOffMaintenanceHost(t *testing.T) {
	cl := newCluster(t, "h1", "h2", "h3")
	cl.run("a", "h1", 1)
	cl.run("b", "h1", 1)
	cl.run("off", "h1", 1, func(r *store.VMRecord) { r.Power = store.PowerStopped })
	cl.st.SetStatus("off", store.VMStatus{State: store.StateStopped, Host: "h1", Epoch: 1})
	cl.run("starting", "h1", 1)
	cl.st.SetStatus("starting", store.VMStatus{State: store.StateStarting, Host: "h1", Epoch: 1})
	cl.run("elsewhere", "h2", 1)
	cl.maintenance("h1")
	cl.pass()
	requested := map[string]string{}
	for _, vm := range []string{"a", "b"} {
		m := cl.migration(vm)
		if m == nil || m.Request == nil || m.Request.Reason != "maintenance" {
			t.Fatalf("%s: migration %+v, want a maintenance request", vm, m)
		}
		requested[vm] = m.Request.ID
	}
	for _, vm := range []string{"off", "starting", "elsewhere"} {
		if m := cl.migration(vm); m != nil {
			t.Errorf("%s: a migration was requested: %+v", vm, m.Request)
		}
	}
	for range 3 {
		cl.advance(time.Second)
		cl.pass()
	}
	for _, vm := range []string{"a", "b"} {
		p := cl.plan(vm)
		if p.ID != requested[vm] || p.Phase != proto.Scheduled || p.Source != "h1" || p.Target == "h1" || p.Target == "" {
			t.Errorf("%s: plan %+v, want %s scheduled off h1 (one request per VM)", vm, p, requested[vm])
		}
		if id := cl.migration(vm).Request.ID; id != requested[vm] {
			t.Errorf("%s: a second evacuation request (%s) while %s is pending or under way", vm, id, requested[vm])
		}
	}
}

// A VM that cannot leave a host in maintenance keeps running there, with
// one event saying why (not one per pass) and no migration request.
func TestEvacuationBlockedIsReportedOnce(t *testing.T) {
	cl := newCluster(t, "h1")
	cl.addHost("h2", 2)
	cl.run("big", "h1", 8)
	cl.maintenance("h1")
	for range 3 {
		cl.pass()
	}
	if m := cl.migration("big"); m != nil {
		t.Errorf("a migration was requested: %+v", m.Request)
	}
	if n := cl.countEvents("big", "vm.evacuation-blocked"); n != 1 {
		t.Errorf("%d evacuation-blocked events, want 1", n)
	}
	cl.wantOnSource("big", "h1")
}

// A failed evacuation is retried, but not in a tight loop: no new request
// within 10 seconds of the failure.
func TestFailedEvacuationRetriedAfterPause(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run("vm1", "h1", 1)
	cl.maintenance("h1")
	cl.pass() // the request
	cl.pass() // the plan
	first := cl.plan("vm1")
	cl.targetReports("vm1", first.ID, proto.TargetFailed, "no image")
	cl.pass() // it fails
	if p := cl.plan("vm1"); p.Phase != proto.Failed {
		t.Fatalf("plan phase %s, want failed", p.Phase)
	}
	cl.advance(10*time.Second - time.Millisecond)
	cl.pass()
	if id := cl.migration("vm1").Request.ID; id != first.ID {
		t.Fatalf("retried %s right after the failure", id)
	}
	cl.advance(time.Millisecond)
	cl.pass()
	if m := cl.migration("vm1"); m.Request.ID == first.ID || m.Request.Reason != "maintenance" {
		t.Errorf("request %+v, want a new maintenance request 10s after the failure", m.Request)
	}
}

func (cl *cluster) advance(d time.Duration) { cl.now = cl.now.Add(d) }
