package ha

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// isolateH1 is h1 cut off from the management network only: its lease
// expires, but it still heartbeats at the datastore, listing its VMs.
func (cl *cluster) isolateH1() {
	cl.st.SetAlive("h1", false)
	cl.pass() // the expiry is seen now
}

// An isolated host (lease gone, datastore heartbeat fresh) keeps its VMs
// until the isolation timeout: a short network blip moves nothing. Only
// then is the VM fenced, and still not restarted while the host runs it.
func TestIsolatedHostKeepsVMsUntilIsolationTimeout(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.isolateH1()
	cl.advance(tGrace)
	cl.pass()
	cl.advance(tIsolation - tGrace - time.Millisecond)
	cl.pass()
	if n := cl.arb.revokeCalls(); n != 0 {
		t.Fatalf("%d revocations within the isolation timeout", n)
	}
	cl.wantUnmoved("vm1", "h1")
	if n := cl.countEvents("vm1", store.EvHostIsolated); n != 1 {
		t.Errorf("%d host.isolated events while waiting, want 1", n)
	}

	cl.advance(time.Millisecond)
	cl.pass()
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"vm1@h1"}) {
		t.Errorf("revocations %v at the isolation timeout, want [vm1@h1]", got)
	}
	cl.wantUnmoved("vm1", "h1") // fenced, but the host still lists it
}

// After the isolation timeout a power-off VM is fenced on the isolated
// host and restarted elsewhere only once the host's heartbeat no longer
// lists it (its agent killed it on learning of the revocation).
func TestIsolatedVMRestartsOnlyOnceItsHostStoppedIt(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.isolateH1()
	cl.advance(tIsolation)
	cl.pass()
	cl.advance(time.Second)
	cl.pass()
	if f := cl.fence("vm1"); f == nil || f.Host != "h1" {
		t.Fatalf("fence %+v, want h1 fenced after the isolation timeout", f)
	}
	cl.wantUnmoved("vm1", "h1")

	cl.arb.removeVM("h1", "vm1")
	cl.pass()
	cl.wantOn("vm1", "h2")
	if n := cl.arb.revokeCalls(); n != 1 {
		t.Errorf("%d revocations, want 1 (the fence is not repeated)", n)
	}
}

// A leave-running VM stays on its isolated host, unfenced, however long
// the isolation lasts; a power-off VM beside it is fenced.
func TestLeaveRunningVMStaysOnIsolatedHost(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("stay", spec.PriorityHigh, leaveRunning), "h1")
	cl.run(haVM("off", spec.PriorityHigh), "h1")
	cl.isolateH1()
	cl.advance(tIsolation * 3)
	cl.pass()
	cl.pass()
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"off@h1"}) {
		t.Errorf("revocations %v, want only off@h1", got)
	}
	cl.wantUnmoved("stay", "h1")
	if f := cl.fence("stay"); f != nil {
		t.Errorf("the leave-running VM was fenced: %+v", f)
	}
	if n := cl.countEvents("stay", store.EvHostIsolated); n != 1 {
		t.Errorf("%d host.isolated events about the leave-running VM, want 1", n)
	}

	// Once the host is dead (no heartbeat at all), it is restarted.
	cl.arb.dropHeartbeat("h1")
	cl.pass()
	cl.restartedOff("stay", "h1")
}

// When the leader cannot read a datastore's heartbeats it cannot tell a
// dead host from an isolated one, and assumes the worst: the VM is not
// restarted elsewhere.
func TestUnreadableHeartbeatsRestartNothing(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.arb.setHeartbeatErr(errors.New("storage server unreachable"))
	cl.killHost("h1")
	cl.pass()
	cl.advance(tIsolation * 3)
	cl.pass()
	cl.pass()
	cl.wantUnmoved("vm1", "h1")
	if n := cl.countEvents("vm1", store.EvRestartPlaced); n != 0 {
		t.Errorf("%d restarts placed without the heartbeats", n)
	}

	cl.arb.setHeartbeatErr(nil) // h1's heartbeat is gone: it is dead
	cl.pass()
	cl.wantOn("vm1", "h2")
}

// A datastore that every live host reports unreachable moves nothing,
// however long it lasts: one alarm, and one event when it is back.
func TestStorageDownForEveryoneMovesNothing(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.run(haVM("vm2", spec.PriorityHigh), "h2")
	for _, h := range []string{"h1", "h2"} {
		cl.st.SetStorage(h, store.StorageState{Unreachable: map[string]time.Time{"shared": cl.now}})
		cl.arb.setAge(h, stale.Age)
	}
	cl.pass()
	cl.advance(tLossConfirm + time.Second)
	cl.pass()
	cl.advance(tLossConfirm + time.Second)
	cl.pass()
	cl.wantUnmoved("vm1", "h1")
	cl.wantUnmoved("vm2", "h2")
	if n := cl.countEvents("", store.EvVMEvicted) + cl.countEvents("", store.EvAlarmStorageLost) + cl.arb.revokeCalls(); n != 0 {
		t.Errorf("VMs moved for a datastore down for everyone: events %v", cl.st.EventTypes(""))
	}
	if n := cl.countEvents("", "alarm.datastore-unreachable"); n != 1 {
		t.Errorf("%d datastore-unreachable alarms, want 1", n)
	}

	for _, h := range []string{"h1", "h2"} {
		cl.st.SetStorage(h, store.StorageState{})
		cl.arb.setAge(h, fresh.Age)
	}
	cl.pass()
	if n := cl.countEvents("", "datastore.reachable"); n != 1 {
		t.Errorf("%d datastore.reachable events, want 1", n)
	}
}

// A host that lost its path to a datastore another host still reaches
// has its VMs moved once the loss is confirmed (StorageLossConfirm): the
// host is asked to stop them, then they are fenced and restarted.
func TestStorageLossOnOneHostMovesItsVMs(t *testing.T) {
	cl := newCluster(t, "h1", "h2")
	cl.run(haVM("vm1", spec.PriorityHigh), "h1")
	cl.st.SetStorage("h1", store.StorageState{Unreachable: map[string]time.Time{"shared": cl.now}})
	cl.arb.setAge("h1", stale.Age)
	cl.pass()
	cl.advance(tLossConfirm - time.Millisecond)
	cl.pass()
	cl.wantUnmoved("vm1", "h1")

	cl.advance(time.Millisecond)
	cl.pass()
	if p := cl.placement("vm1"); p.Host != "h1" || p.Epoch != 2 || !p.Evict {
		t.Fatalf("placement %+v, want h1 asked to stop the VM", p)
	}
	if n := cl.countEvents("vm1", store.EvAlarmStorageLost); n != 1 {
		t.Errorf("%d storage-lost alarms, want 1", n)
	}
	if n := cl.arb.revokeCalls(); n != 0 {
		t.Errorf("%d revocations before the host stopped the VM", n)
	}

	cl.report("vm1", store.StateStopped, "evicted")
	cl.pass()
	if got := cl.arb.revoked(); !slices.Equal(got, []string{"vm1@h1"}) {
		t.Errorf("revocations %v, want [vm1@h1]", got)
	}
	cl.wantOn("vm1", "h2")
}
