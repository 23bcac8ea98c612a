package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/metrics"

	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/driver/fake"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// The agent starts a VM the placement names this host for, under that
// placement's epoch, reports it running for that epoch, and starts it
// only once.
func TestStartsAVMPlacedHereAtItsEpoch(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 4)
	h.reconcile()
	if h.drv.Starts("web") != 1 {
		t.Fatalf("starts = %d, want 1", h.drv.Starts("web"))
	}
	cfg, _ := h.drv.Config("web")
	if cfg.Epoch != 4 || cfg.UID != "u-web" {
		t.Errorf("started with epoch %d uid %q, want the placement's epoch 4 and the VM's uid", cfg.Epoch, cfg.UID)
	}
	ls, _ := h.drv.Inspect("web")
	st := h.status("web")
	if st == nil || st.State != store.StateRunning || st.Host != self || st.Epoch != 4 || st.PID != ls.PID {
		t.Fatalf("status %+v, want running on h1 at epoch 4 with pid %d", st, ls.PID)
	}
	wantEvent(t, h.events("web"), store.EvVMRunning)
	h.reconcile()
	h.reconcile()
	if n := h.drv.Count(fake.OpStart, "web"); n != 1 {
		t.Errorf("start attempts after more reconciles: %d, want 1", n)
	}
}

// A VM placed on another host, or not placed at all, is not started here
// and gets no status from this host.
func TestDoesNotStartAVMPlacedElsewhere(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("there", nil), "h2", 1)
	h.st.AddVM(vmRecord("nowhere", nil))
	h.reconcile()
	if calls := h.drv.Calls(); len(calls) != 0 {
		t.Fatalf("driver calls %+v, want none", calls)
	}
	if st := h.status("there"); st != nil {
		t.Errorf("wrote a status for a VM placed on h2: %+v", st)
	}
}

// Without a surely valid host lease the leader may be moving the VM: the
// agent starts nothing, and starts it once the lease is renewed.
func TestNeverStartsWithoutASurelyValidLease(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	h.lapseLease()
	h.reconcile()
	if h.drv.Count(fake.OpStart, "web") != 0 {
		t.Fatal("started a VM with a lapsed host lease")
	}
	h.renewLease()
	h.reconcile()
	if h.drv.Starts("web") != 1 {
		t.Fatalf("starts after renewal = %d, want 1", h.drv.Starts("web"))
	}
}

// Every start asks the VM's datastore for a new generation and runs under
// it; when the datastore refuses, QEMU is not started and the VM is
// reported start-failed.
func TestStartRunsUnderANewStorageGeneration(t *testing.T) {
	h := newHarness(t)
	arb, ds := &arbiter{}, &datastore{}
	h.a.cfg.Arbiters = map[string]storage.Arbiter{"shared": arb}
	h.a.cfg.Datastores = map[string]storage.Datastore{"shared": ds}
	h.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared})
	h.addVM(vmRecord("db", func(s *spec.VMSpec) { s.Disks = []spec.Disk{{Name: "root", Datastore: "shared"}} }), self, 1)
	h.reconcile()
	cfg, _ := h.drv.Config("db")
	if cfg.Grants["shared"] != 1 || len(cfg.Disks) != 1 || !ds.prepared[1] {
		t.Fatalf("first start: grants %v disks %v prepared %v, want generation 1", cfg.Grants, cfg.Disks, ds.prepared)
	}
	// Crashed (not HA: left failed); the operator starts it again.
	h.drv.Crash("db", "")
	h.reconcile()
	h.st.SetRecord("db", func(r *store.VMRecord) { r.StartRequest++ })
	h.reconcile()
	if cfg, _ := h.drv.Config("db"); cfg.Grants["shared"] != 2 || h.drv.Starts("db") != 2 {
		t.Fatalf("second start: grants %v after %d starts, want generation 2", cfg.Grants, h.drv.Starts("db"))
	}
	// The storage refuses the next grant.
	h.drv.Crash("db", "")
	h.reconcile()
	arb.refuse = errors.New("fenced: host h1 may not write")
	h.st.SetRecord("db", func(r *store.VMRecord) { r.StartRequest++ })
	h.reconcile()
	if h.drv.Count(fake.OpStart, "db") != 2 {
		t.Fatalf("QEMU started without a generation: %+v", h.drv.Calls())
	}
	st := h.status("db")
	if st == nil || st.State != store.StateFailed || st.Reason != "start-failed" || !strings.Contains(st.Message, "may not write") {
		t.Fatalf("status after a refused grant: %+v", st)
	}
}

// When the placement moves to another host (a new epoch), the local copy
// is killed at once (no graceful stop), forgotten, and this host writes
// no status for the new placement.
func TestKillsTheLocalCopyWhenPlacementMoves(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	h.reconcile()
	h.events("web")
	h.st.Place("web", store.Placement{Host: "h2", Epoch: 2})
	h.reconcile()
	if h.drv.Kills("web") != 1 || h.drv.Stops("web") != 0 {
		t.Fatalf("kills %d stops %d, want the stale copy killed", h.drv.Kills("web"), h.drv.Stops("web"))
	}
	if _, err := h.drv.Inspect("web"); !errors.Is(err, driver.ErrNotFound) {
		t.Errorf("the killed copy was not destroyed: %v", err)
	}
	wantEvent(t, h.events("web"), store.EvVMKilled)
	if st := h.status("web"); st != nil && st.Host == self && st.Epoch == 2 {
		t.Errorf("h1 reported on h2's placement: %+v", st)
	}
	h.reconcile()
	if h.drv.Count(fake.OpStart, "web") != 1 {
		t.Error("started the VM again after its placement moved away")
	}
}

// A status is written for the placement revision the agent acted on: a
// start that finishes after the placement moved cannot report the VM
// running, and the copy it started is killed on the next pass.
func TestStatusForAMovedPlacementIsRefused(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	release := h.drv.HoldStarts()
	defer release()
	if err := h.a.reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return h.drv.StartsInProgress() == 1 })
	h.st.Place("web", store.Placement{Host: "h2", Epoch: 2})
	release()
	h.settle()
	if st := h.status("web"); st != nil && st.State == store.StateRunning {
		t.Fatalf("a start acting on epoch 1 reported running after the placement moved: %+v", st)
	}
	h.reconcile()
	if h.drv.Running("web") || h.drv.Kills("web") != 1 {
		t.Fatalf("the copy started for the old placement still runs (kills %d)", h.drv.Kills("web"))
	}
}

// While a start is in progress, further passes do not start the VM again.
func TestNoSecondStartWhileOneIsInProgress(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	release := h.drv.HoldStarts()
	defer release()
	ctx := context.Background()
	for range 3 {
		if err := h.a.reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return h.drv.StartsInProgress() == 1 })
	}
	release()
	h.settle()
	h.reconcile()
	if n := h.drv.Count(fake.OpStart, "web"); n != 1 {
		t.Fatalf("start attempts = %d (%+v), want 1", n, h.drv.Calls())
	}
	if st := h.status("web"); st == nil || st.State != store.StateRunning {
		t.Fatalf("status %+v, want running", st)
	}
}

// A crashed QEMU of an HA VM is restarted here up to the restart limit;
// past it the VM is left failed with an alarm, and not started again.
func TestCrashedHAVMRestartedWithinLimitThenFailed(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	h.addVM(vmRecord("web", haSpec(2)), self, 1)
	h.reconcile()
	for i := 1; i <= 2; i++ {
		if !h.drv.Crash("web", "") {
			t.Fatalf("crash %d: VM not running", i)
		}
		h.reconcile()
		if h.drv.Starts("web") != 1+i {
			t.Fatalf("after crash %d: %d starts, want %d", i, h.drv.Starts("web"), 1+i)
		}
		wantEvent(t, h.events("web"), store.EvVMRestarted)
		if st := h.status("web"); st.State != store.StateRunning || len(st.Restarts) != i {
			t.Fatalf("after crash %d: status %s with %d restarts, want running with %d", i, st.State, len(st.Restarts), i)
		}
	}
	h.drv.Crash("web", "")
	h.reconcile()
	st := h.status("web")
	if st.State != store.StateFailed || st.Reason != "restart-limit" {
		t.Fatalf("third crash within the hour: %s/%s, want failed/restart-limit", st.State, st.Reason)
	}
	wantEvent(t, h.events("web"), store.EvAlarmRestartLimit)
	h.reconcile()
	h.reconcile()
	if h.drv.Starts("web") != 3 {
		t.Fatalf("starts = %d, want 3 (no restart past the limit)", h.drv.Starts("web"))
	}
	if n := h.a.restarts.Of("web")[metrics.RestartQEMUExit]; n != 2 {
		t.Fatalf("vigil_vm_restarts_total = %v, want 2 (the restarts done, not the one refused)", n)
	}
}

// An operator's `vm start` of a VM left failed at its restart limit gives
// its budget back.
func TestOperatorStartGivesBackTheRestartBudget(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	h.addVM(vmRecord("web", haSpec(1)), self, 1)
	h.reconcile()
	h.drv.Crash("web", "")
	h.reconcile() // restart 1 of 1
	h.drv.Crash("web", "")
	h.reconcile() // limit reached
	if st := h.status("web"); st.Reason != "restart-limit" || h.drv.Starts("web") != 2 {
		t.Fatalf("setup: status %+v after %d starts", st, h.drv.Starts("web"))
	}
	h.st.SetRecord("web", func(r *store.VMRecord) { r.StartRequest++ })
	h.reconcile()
	st := h.status("web")
	if h.drv.Starts("web") != 3 || st.State != store.StateRunning || len(st.Restarts) != 0 {
		t.Fatalf("after vm start: %d starts, status %s with %d restarts; want started with a fresh budget", h.drv.Starts("web"), st.State, len(st.Restarts))
	}
	h.drv.Crash("web", "")
	h.reconcile()
	if h.drv.Starts("web") != 4 {
		t.Fatal("the restored budget did not allow a restart")
	}
}

// A crash of a VM without HA is reported failed and never restarted; a
// guest that powers itself off is reported stopped, not failed.
func TestExitsOfNonHAVMsAreReportedNotRestarted(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("crashy", nil), self, 1)
	h.addVM(vmRecord("quits", haSpec(3)), self, 1)
	h.allowNoWatchdog()
	h.reconcile()
	h.drv.Crash("crashy", "")
	h.drv.GuestPowerOff("quits")
	h.reconcile()
	h.reconcile()
	if st := h.status("crashy"); st.State != store.StateFailed || st.Reason != "qemu-crashed" {
		t.Errorf("crash without HA: %s/%s, want failed/qemu-crashed", st.State, st.Reason)
	}
	if st := h.status("quits"); st.State != store.StateStopped || st.Reason != "guest-poweroff" {
		t.Errorf("guest power-off of an HA VM: %s/%s, want stopped/guest-poweroff", st.State, st.Reason)
	}
	if h.drv.Starts("crashy") != 1 || h.drv.Starts("quits") != 1 {
		t.Errorf("starts crashy %d quits %d, want no restart", h.drv.Starts("crashy"), h.drv.Starts("quits"))
	}
}

// leaveRunning sets the scene of an agent restart: the VM runs here under
// epoch 1 and its last status says so.
func (h *harness) leaveRunning(rec store.VMRecord, unresponsive bool) {
	h.addVM(rec, self, 1)
	h.drv.Leave(driver.Status{Name: rec.Name(), UID: rec.UID(), Epoch: 1, PID: 4242, Running: true})
	h.drv.SetUnresponsive(rec.Name(), unresponsive)
	h.st.SetStatus(rec.Name(), store.VMStatus{State: store.StateRunning, Host: self, Epoch: 1, PID: 4242, StartRequest: rec.StartRequest})
	if _, err := h.drv.Recover(context.Background()); err != nil {
		h.t.Fatal(err)
	}
}

// After an agent restart, a QEMU whose monitor does not answer is killed,
// not left running; an HA VM is then started again, once, only after
// the old process is gone.
func TestUnresponsiveHAVMAfterRestartIsKilledThenStartedOnce(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	h.leaveRunning(vmRecord("web", haSpec(3)), true)
	h.reconcile()
	h.reconcile()
	var order []string
	for _, c := range h.drv.Calls() {
		if c.Err != nil {
			t.Errorf("driver call failed: %+v", c)
		}
		order = append(order, c.Op)
	}
	if strings.Join(order, ",") != fake.OpKillUnresponsive+","+fake.OpStart {
		t.Fatalf("driver calls %v, want the unresponsive QEMU killed, then one start", order)
	}
	ls, _ := h.drv.Inspect("web")
	if st := h.status("web"); st.State != store.StateRunning || st.PID != ls.PID || ls.PID == 4242 {
		t.Fatalf("status %+v, want running as the new process (pid %d)", st, ls.PID)
	}
}

// The same without HA: the VM is killed and reported failed, saying why.
func TestUnresponsiveVMAfterRestartIsReportedFailed(t *testing.T) {
	h := newHarness(t)
	h.leaveRunning(vmRecord("web", nil), true)
	h.reconcile()
	if h.drv.Running("web") || h.drv.Count(fake.OpStart, "web") != 0 {
		t.Fatalf("unresponsive VM: running %v, start attempts %d", h.drv.Running("web"), h.drv.Count(fake.OpStart, "web"))
	}
	st := h.status("web")
	if st.State != store.StateFailed || st.Reason != "qemu-unresponsive" || !strings.Contains(st.Message, "did not answer on QMP") {
		t.Fatalf("status %+v, want failed/qemu-unresponsive explaining the kill", st)
	}
}

// A VM that answers after the agent restart is adopted as it runs: not
// started a second time, not killed.
func TestReattachedVMIsNotStartedAgain(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	h.leaveRunning(vmRecord("web", haSpec(3)), false)
	h.reconcile()
	h.reconcile()
	if calls := h.drv.Calls(); len(calls) != 0 {
		t.Fatalf("driver calls %+v, want none", calls)
	}
	if st := h.status("web"); st.State != store.StateRunning || st.PID != 4242 {
		t.Fatalf("status %+v, want the reattached process running", st)
	}
}

// A VM deleted from the cluster while this host could not take part is
// killed and forgotten here.
func TestVMDeletedFromTheStoreIsKilled(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	h.addVM(vmRecord("keep", nil), self, 1)
	h.reconcile()
	v := h.st.VM("web")
	if err := h.st.DeleteVM(context.Background(), v.Record, v.RecordRev); err != nil {
		t.Fatal(err)
	}
	h.events("web")
	h.reconcile()
	if h.drv.Kills("web") != 1 || h.drv.Running("web") {
		t.Fatalf("orphan: kills %d running %v", h.drv.Kills("web"), h.drv.Running("web"))
	}
	if _, err := h.drv.Inspect("web"); !errors.Is(err, driver.ErrNotFound) {
		t.Error("orphan not destroyed")
	}
	wantEvent(t, h.events("web"), store.EvVMKilled)
	if !h.drv.Running("keep") || h.drv.Kills("keep") != 0 {
		t.Error("a VM still in the store was touched")
	}
}

// A VM being deleted is killed (no graceful shutdown: its disks go next),
// its disks deleted, and it is reported deleted.
func TestDeletingVMIsKilledAndReportedDeleted(t *testing.T) {
	h := newHarness(t)
	ds := &datastore{}
	h.a.cfg.Arbiters = map[string]storage.Arbiter{"shared": &arbiter{}}
	h.a.cfg.Datastores = map[string]storage.Datastore{"shared": ds}
	h.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared})
	h.addVM(vmRecord("web", func(s *spec.VMSpec) { s.Disks = []spec.Disk{{Name: "root", Datastore: "shared"}} }), self, 1)
	h.reconcile()
	h.st.SetRecord("web", func(r *store.VMRecord) { r.Deleting = true })
	h.reconcile()
	if h.drv.Kills("web") != 1 || h.drv.Stops("web") != 0 {
		t.Fatalf("kills %d stops %d, want one kill and no graceful stop", h.drv.Kills("web"), h.drv.Stops("web"))
	}
	if ds.deleted != 1 {
		t.Errorf("disks deleted: %d, want 1", ds.deleted)
	}
	if st := h.status("web"); st.State != store.StateDeleted {
		t.Fatalf("status %+v, want deleted", st)
	}
	if _, err := h.drv.Inspect("web"); !errors.Is(err, driver.ErrNotFound) {
		t.Error("runtime state of a deleted VM kept")
	}
}

// A VM powered off by its owner is shut down gracefully, reported
// stopped, and left alone afterwards.
func TestPowerOffStopsGracefully(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	h.reconcile()
	h.st.SetRecord("web", func(r *store.VMRecord) { r.Power = store.PowerStopped })
	h.reconcile()
	h.reconcile()
	if h.drv.Stops("web") != 1 || h.drv.Kills("web") != 0 || h.drv.Running("web") {
		t.Fatalf("stops %d kills %d running %v, want one graceful stop", h.drv.Stops("web"), h.drv.Kills("web"), h.drv.Running("web"))
	}
	if st := h.status("web"); st.State != store.StateStopped || st.Reason != "stopped" {
		t.Fatalf("status %+v, want stopped", st)
	}
	if h.drv.Count(fake.OpStart, "web") != 1 {
		t.Error("a powered-off VM was started again")
	}
}

// An eviction (the leader moving a VM off a live host) kills the VM here
// and reports it evicted for the new epoch, once.
func TestEvictionStopsAndReportsEvicted(t *testing.T) {
	h := newHarness(t)
	h.addVM(vmRecord("web", nil), self, 1)
	h.reconcile()
	h.st.Place("web", store.Placement{Host: self, Epoch: 2, Evict: true, Reason: "datastore unreachable"})
	h.reconcile()
	h.reconcile()
	if h.drv.Kills("web") != 1 || h.drv.Running("web") {
		t.Fatalf("kills %d running %v", h.drv.Kills("web"), h.drv.Running("web"))
	}
	st := h.status("web")
	if st.State != store.StateStopped || st.Reason != "evicted" || st.Epoch != 2 || !strings.Contains(st.Message, "datastore unreachable") {
		t.Fatalf("status %+v, want stopped/evicted at epoch 2", st)
	}
	if h.drv.Count(fake.OpStart, "web") != 1 {
		t.Error("an evicted VM was started again")
	}
	wantEvent(t, h.events("web"), store.EvVMEvicted)
}

// VM monitoring of the guest: a VM whose heartbeat stopped is reset
// within the restart budget; past it, it is left as is with one alarm.
func TestHungGuestIsResetWithinBudget(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	rec := vmRecord("web", func(s *spec.VMSpec) {
		haSpec(1)(s)
		s.HA.Monitoring.GuestHeartbeat = true
		s.HA.Monitoring.HeartbeatTimeout = spec.Duration(5 * time.Second)
	})
	h.leaveRunning(rec, false)
	h.reconcile() // reads the snapshot the monitor uses
	ctx := context.Background()
	h.drv.SetHeartbeat("web", time.Now().Add(-time.Second))
	h.a.checkHeartbeats(ctx)
	if h.drv.Resets("web") != 0 {
		t.Fatal("reset a guest whose heartbeat is fresh")
	}
	h.drv.SetHeartbeat("web", time.Now().Add(-time.Minute))
	h.a.checkHeartbeats(ctx)
	if h.drv.Resets("web") != 1 {
		t.Fatalf("resets = %d, want 1 for a guest silent for a minute", h.drv.Resets("web"))
	}
	wantEvent(t, h.events("web"), store.EvVMReset)
	h.a.checkHeartbeats(ctx)
	if h.drv.Resets("web") != 1 {
		t.Fatal("reset again before the guest had heartbeatTimeout to come back")
	}
	// Still silent a minute later: the budget (1 per hour) is spent.
	h.a.mon.Started("web", time.Now().Add(-time.Minute))
	h.a.checkHeartbeats(ctx)
	h.a.checkHeartbeats(ctx)
	if h.drv.Resets("web") != 1 {
		t.Fatalf("resets = %d past the budget, want 1", h.drv.Resets("web"))
	}
	alarms := 0
	for _, e := range h.events("web") {
		if e == store.EvAlarmRestartLimit {
			alarms++
		}
	}
	if alarms != 1 {
		t.Errorf("restart-limit alarms = %d, want 1", alarms)
	}
}

// A crashed HA VM is not restarted on its host while the host lease is not
// surely valid (the leader may be placing it elsewhere right then), and the
// wait costs no restart budget; once the lease is back it restarts.
func TestCrashedHAVMNotRestartedWithoutASurelyValidLease(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	h.addVM(vmRecord("web", haSpec(2)), self, 1)
	h.reconcile()
	if !h.drv.Crash("web", "") {
		t.Fatal("VM not running")
	}
	h.lapseLease()
	h.reconcile()
	h.reconcile()
	if n := h.drv.Starts("web"); n != 1 {
		t.Fatalf("starts with a lapsed lease = %d, want 1 (the first start only)", n)
	}
	h.renewLease()
	h.reconcile()
	if n := h.drv.Starts("web"); n != 2 {
		t.Fatalf("starts after the renewal = %d, want 2", n)
	}
	if st := h.status("web"); st.State != store.StateRunning || len(st.Restarts) != 1 {
		t.Fatalf("status %s with %d restarts, want running with 1", st.State, len(st.Restarts))
	}
}

// A reset request (an alarm's restart action) resets the guest of a VM
// running here once, even while a stale snapshot still shows the request,
// and is deleted; a request for a VM on another host is left alone.
func TestResetRequestServedOnce(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	rec := vmRecord("web", haSpec(1))
	h.leaveRunning(rec, false)
	h.st.SetRequest("web", store.RequestReset+":alarm hot at 1")
	h.reconcile()
	ctx := context.Background()
	h.a.checkHeartbeats(ctx)
	if h.drv.Resets("web") != 1 {
		t.Fatalf("resets = %d, want 1", h.drv.Resets("web"))
	}
	h.a.checkHeartbeats(ctx) // the snapshot it reads still has the request
	if h.drv.Resets("web") != 1 {
		t.Fatalf("resets = %d from one request, want 1", h.drv.Resets("web"))
	}
	if snap, _ := h.st.Snapshot(ctx); snap.Requests["web"] != "" {
		t.Fatalf("request left after the reset: %q", snap.Requests["web"])
	}
	wantEvent(t, h.events("web"), store.EvVMReset)
}
