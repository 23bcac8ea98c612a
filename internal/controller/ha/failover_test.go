package ha

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// A VM of a dead host is restarted elsewhere only once the host's lease
// has expired and the grace period after it has passed; not a moment
// earlier.
func TestRestartOnlyAfterLeaseExpiryAndGrace(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityMedium), "h1")
	cl.pass()
	cl.wantUnmoved("vm1", "h1")

	cl.killHost("h1")
	cl.pass() // the expiry is seen: the grace period starts
	cl.advance(tGrace - time.Millisecond)
	cl.pass()
	if n := cl.arb.revokeCalls(); n != 0 {
		t.Fatalf("%d revocations within the grace period", n)
	}
	cl.wantUnmoved("vm1", "h1")

	cl.advance(time.Millisecond)
	cl.pass()
	cl.wantOn("vm1", "h2")
	if p := cl.placement("vm1"); p.Epoch != 2 || !strings.HasPrefix(p.Reason, "HA restart") || !p.Time.Equal(cl.now) {
		t.Errorf("restart placement %+v, want epoch 2, an HA restart reason, placed now", p)
	}
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"vm1@h1"}) {
		t.Errorf("revocations %v, want [vm1@h1]", got)
	}
	if n := cl.countEvents("", store.EvLeaseExpired); n != 1 {
		t.Errorf("%d lease-expired events, want 1", n)
	}
}

// The fence comes first: the storage revokes the dead host's access while
// placement still names it, the fence is recorded, and only then is the
// restart placed.
func TestFenceRevokesBeforeRestartIsPlaced(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	var atRevoke store.Placement
	var fenceAtRevoke *store.Fence
	cl.arb.onRevoke = func(storage.VMRef, string) {
		atRevoke, fenceAtRevoke = cl.placement("vm1"), cl.fence("vm1")
	}
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()

	if atRevoke.Host != "h1" || atRevoke.Epoch != 1 || fenceAtRevoke != nil {
		t.Errorf("at the revocation: placement %+v, fence %+v; want still on h1 epoch 1, no fence recorded yet", atRevoke, fenceAtRevoke)
	}
	if got := cl.arb.uids(); !slices.Equal(got, []string{"u-vm1"}) {
		t.Errorf("revoked VM identities %v, want the VM's UID", got)
	}
	if f := cl.fence("vm1"); f == nil || f.Host != "h1" || f.Epoch != 1 {
		t.Errorf("fence record %+v, want h1 up to epoch 1", f)
	}
	cl.wantOn("vm1", "h2")
	fenced, placed := cl.eventIndex("vm1", store.EvVMFenced), cl.eventIndex("vm1", store.EvRestartPlaced)
	if fenced < 0 || placed < 0 || fenced > placed {
		t.Errorf("events %v: want vm.fenced before vm.restart-placed", cl.st.EventTypes("vm1"))
	}
}

// The fence records when the dead host was last heard at the datastore
// (its last heartbeat), the mark a failover is timed from.
func TestFenceRecordsTheHostsLastHeartbeat(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.killHost("h1")
	cl.arb.setHeartbeat("h1", storage.HostHeartbeat{Age: 5 * time.Second}) // stale: the host is dead
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	f := cl.fence("vm1")
	if f == nil {
		t.Fatal("no fence")
	}
	if want := f.Time.Add(-5 * time.Second); !f.LastHeard.Equal(want) {
		t.Fatalf("fence last heard %s, want %s (5 s before the fence)", f.LastHeard, want)
	}
}

// A revocation the storage refuses stops the failover: no fence record,
// no restart, and the pass reports the error. The next pass tries again.
func TestFailedRevokeRestartsNothing(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.arb.setRevokeErr(errors.New("storage server unreachable"))
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	if err := cl.tryPass(); err == nil {
		t.Error("a pass whose fence failed reported no error")
	}
	if cl.arb.revokeCalls() == 0 {
		t.Fatal("the pass never tried to fence (the test proves nothing)")
	}
	if f := cl.fence("vm1"); f != nil {
		t.Errorf("a fence was recorded though the storage refused it: %+v", f)
	}
	cl.wantUnmoved("vm1", "h1")
	if n := cl.countEvents("vm1", store.EvRestartPlaced) + cl.countEvents("vm1", store.EvVMFenced); n != 0 {
		t.Errorf("events %v after a failed fence", cl.st.EventTypes("vm1"))
	}

	cl.arb.setRevokeErr(nil)
	cl.pass()
	cl.wantOn("vm1", "h2")
}

// A host whose lease comes back within the grace period (a short etcd
// hiccup) keeps its VMs: nothing is fenced or moved.
func TestHostBackWithinGraceMovesNothing(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.st.SetAlive("h1", false)
	cl.pass()
	cl.advance(tGrace / 2)
	cl.st.SetAlive("h1", true)
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	if n := cl.arb.revokeCalls(); n != 0 {
		t.Errorf("%d revocations for a host that came back", n)
	}
	cl.wantUnmoved("vm1", "h1")
	if n := cl.countEvents("", store.EvHostUp); n != 1 {
		t.Errorf("%d host.up events, want 1", n)
	}
}

// A leader whose term ended writes nothing and fences nothing: the pass
// fails with ErrNotLeader before the storage is asked to revoke.
func TestStaleLeaderFencesAndPlacesNothing(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.st.EndTerm()
	if err := cl.tryPass(); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("the stale pass: %v, want ErrNotLeader", err)
	}
	if n := cl.arb.revokeCalls(); n != 0 {
		t.Errorf("the stale leader asked the storage for %d revocations", n)
	}
	if f := cl.fence("vm1"); f != nil {
		t.Errorf("the stale leader recorded a fence: %+v", f)
	}
	cl.wantUnmoved("vm1", "h1")
	if n := cl.countEvents("vm1", store.EvVMFenced) + cl.countEvents("vm1", store.EvRestartPlaced); n != 0 {
		t.Errorf("the stale leader announced a failover: %v", cl.st.EventTypes("vm1"))
	}
}

// VMs HA does not restart stay on their dead host, unfenced: HA off,
// restart priority disabled, a disk on a host-local datastore, or meant
// to be off. The ones HA covers but cannot restart say so once.
func TestNonRestartableVMsStayOnDeadHost(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.st.AddDatastore(store.Datastore{Name: "local", Type: store.DatastoreLocal})
	cl.run(haVM("noha", spec.PriorityHigh, func(r *store.VMRecord) { r.VM.Spec.HA.Enabled = false }), "h1")
	cl.run(haVM("disabled", spec.PriorityDisabled), "h1")
	cl.run(haVM("localdisk", spec.PriorityHigh, func(r *store.VMRecord) { r.VM.Spec.Disks[0].Datastore = "local" }), "h1")
	cl.run(haVM("off", spec.PriorityHigh, func(r *store.VMRecord) { r.Power = store.PowerStopped }), "h1")
	cl.run(haVM("covered", spec.PriorityLow), "h1") // control: this one moves
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	cl.pass()

	cl.restartedOff("covered", "h1")
	for _, vm := range []string{"noha", "disabled", "localdisk", "off"} {
		cl.wantUnmoved(vm, "h1")
		if f := cl.fence(vm); f != nil {
			t.Errorf("%s was fenced: %+v", vm, f)
		}
	}
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"covered@h1"}) {
		t.Errorf("revocations %v, want only covered@h1", got)
	}
	for _, vm := range []string{"noha", "disabled", "localdisk"} {
		if n := cl.countEvents(vm, store.EvVMFailed); n != 1 {
			t.Errorf("%s: %d vm.failed events, want 1 (stranded, said once)", vm, n)
		}
	}
}

// A restart honours must anti-affinity: the VM does not join the VM it
// must not share a host with, even on the host placement likes best.
func TestRestartRespectsAntiAffinity(t *testing.T) {
	for _, withRule := range []bool{false, true} {
		cl := newCluster(t, "h1", "h3")
		cl.addHost("h2", 64, 64*spec.GiB) // the emptiest: scoring prefers it
		cl.run(haVM("a", spec.PriorityHigh), "h1")
		cl.run(haVM("b", spec.PriorityHigh), "h2")
		want := "h2" // control: without the rule a goes to the emptiest host
		if withRule {
			cl.st.AddRule(store.Rule{Name: "apart", Kind: store.RuleAntiAffinity, Strength: store.RuleMust, VMs: []string{"a", "b"}})
			want = "h3"
		}
		cl.killHost("h1")
		cl.pass()
		cl.advance(tGrace)
		cl.pass()
		if p := cl.placement("a"); p.Host != want {
			t.Errorf("rule %t: a restarted on %q, want %s", withRule, p.Host, want)
		}
	}
}

// A host in maintenance mode takes no restarts.
func TestRestartAvoidsMaintenanceHost(t *testing.T) {
	for _, maintenance := range []bool{false, true} {
		cl := newCluster(t, "h1", "h3")
		cl.addHost("h2", 64, 64*spec.GiB) // the emptiest: scoring prefers it
		if maintenance {
			if err := cl.st.SetMaintenance(t.Context(), "h2", true, store.Maintenance{Since: cl.now}); err != nil {
				t.Fatal(err)
			}
		}
		cl.run(haVM("vm1", spec.PriorityHigh), "h1")
		cl.killHost("h1")
		cl.pass()
		cl.advance(tGrace)
		cl.pass()
		want := "h2"
		if maintenance {
			want = "h3"
		}
		if p := cl.placement("vm1"); p.Host != want {
			t.Errorf("h2 in maintenance %t: restarted on %q, want %s", maintenance, p.Host, want)
		}
	}
}

// Restarts placed in one pass count against each other's capacity: two
// VMs that fit a survivor one at a time land on different survivors, even
// though the larger survivor scores best for both.
func TestRestartsInOnePassShareCapacity(t *testing.T) {
	cl := newCluster(t, "h3")
	cl.addHost("h1", 32, 32*spec.GiB)
	cl.addHost("h2", 16, 20*spec.GiB)
	cl.run(haVM("v1", spec.PriorityMedium, memory(12*spec.GiB)), "h1")
	cl.run(haVM("v2", spec.PriorityMedium, memory(12*spec.GiB)), "h1")
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	on1, on2 := cl.restartedOff("v1", "h1"), cl.restartedOff("v2", "h1")
	if on1 == on2 {
		t.Errorf("both 12 GiB VMs restarted on %s", on1)
	}
}

// A VM that fits no survivor is fenced but not placed; HA raises one
// no-capacity alarm, and places it as soon as a host that fits appears.
func TestNoRoomForRestartRaisesOneAlarm(t *testing.T) {
	cl := newCluster(t, "h2")
	cl.addHost("h1", 32, 32*spec.GiB)
	cl.run(haVM("big", spec.PriorityHigh, memory(20*spec.GiB)), "h1")
	cl.killHost("h1")
	cl.pass()
	cl.advance(tGrace)
	cl.pass()
	cl.pass()
	cl.wantUnmoved("big", "h1")
	if f := cl.fence("big"); f == nil || f.Host != "h1" {
		t.Errorf("fence %+v, want h1 fenced while the VM waits for room", f)
	}
	if n := cl.countEvents("big", store.EvAlarmNoCapacity); n != 1 {
		t.Errorf("%d no-capacity alarms over two passes, want 1", n)
	}

	cl.addHost("h3", 32, 32*spec.GiB)
	cl.pass()
	cl.wantOn("big", "h3")
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"big@h1"}) {
		t.Errorf("revocations %v, want one, big@h1 (the fence is not repeated)", got)
	}
}

// A test failover to a named host stops the VM on its live host, fences
// it there, and restarts it on the named host, not where placement would
// have put it.
func TestTestFailoverToNamedHost(t *testing.T) {
	cl := newCluster(t, "h1", "h3")
	cl.addHost("h2", 64, 64*spec.GiB) // the emptiest: scoring prefers it
	cl.run(haVM("vm1", spec.PriorityMedium), "h1")
	cl.st.SetRequest("vm1", store.RequestTestFailover+":h3")
	cl.pass()
	if p := cl.placement("vm1"); p.Host != "h1" || p.Epoch != 2 || !p.Evict {
		t.Fatalf("placement %+v, want h1 asked to stop the VM (epoch 2, evict)", p)
	}
	if snap, _ := cl.st.Snapshot(t.Context()); snap.Requests["vm1"] != "" {
		t.Errorf("the request is still pending: %q", snap.Requests["vm1"])
	}
	if n := cl.arb.revokeCalls(); n != 0 {
		t.Errorf("%d revocations before the host stopped the VM", n)
	}

	cl.report("vm1", store.StateStopped, "evicted")
	cl.pass()
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"vm1@h1"}) {
		t.Errorf("revocations %v, want [vm1@h1]", got)
	}
	cl.wantOn("vm1", "h3")
	if p := cl.placement("vm1"); p.Epoch != 3 {
		t.Errorf("placement %+v, want epoch 3", p)
	}
}
