package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/driver/fake"
	"github.com/vigilha/vigil/internal/hatiming"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// runRestartable makes "web" a restartable HA VM on the shared datastore,
// running here under epoch 1 and known to self-fencing.
func (h *harness) runRestartable() {
	h.t.Helper()
	h.a.cfg.Arbiters = map[string]storage.Arbiter{"shared": &arbiter{}}
	h.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared})
	rec := vmRecord("web", func(s *spec.VMSpec) {
		haSpec(3)(s)
		s.Disks = []spec.Disk{{Name: "root", Datastore: "shared"}}
	})
	h.addVM(rec, self, 1)
	h.st.SetStatus("web", store.VMStatus{State: store.StateRunning, Host: self, Epoch: 1, StartRequest: rec.StartRequest})
	if _, err := h.drv.Start(context.Background(), &driver.VMConfig{Name: "web", UID: rec.UID(), Epoch: 1, Grants: map[string]int64{"shared": 1}}); err != nil {
		h.t.Fatal(err)
	}
	h.learn()
}

// learn has self-fencing learn the VMs' policies from the store, as a
// reconcile pass does.
func (h *harness) learn() {
	h.t.Helper()
	snap, err := h.st.Snapshot(context.Background())
	if err != nil {
		h.t.Fatal(err)
	}
	h.a.fence.Learn(snap, self)
}

// fence runs one round of the self-fencing loop and waits for its kills.
func (h *harness) fence() {
	h.a.fenceOnce(context.Background())
	h.settle()
}

// The self-fencing rule as the loop applies it to a running restartable
// VM: the host lease alone or the storage lease alone (host not isolated)
// keeps it; it is killed once both have lapsed, or when the host is
// isolated past the isolation timeout with only the storage lease left.
func TestSelfFenceOnlyWhenBothLeasesLapsed(t *testing.T) {
	ago := func(d time.Duration) time.Duration { return boottime.Now() - d }
	for _, c := range []struct {
		name       string
		leaseSent  time.Duration // send time of the last acked renewal
		storageAck time.Duration // 0: never acknowledged
		peersOK    bool
		kill       bool
	}{
		{"host lease valid, storage lease lapsed", ago(100 * time.Millisecond), ago(10 * time.Second), false, false},
		{"host lease valid, no storage heartbeat ever", ago(100 * time.Millisecond), 0, false, false},
		{"host lease lapsed, storage lease valid, peers reachable", ago(10 * time.Second), ago(100 * time.Millisecond), true, false},
		{"host lease lapsed a moment ago (within the isolation timeout), storage valid, isolated", ago(2 * time.Second), ago(100 * time.Millisecond), false, false},
		{"both lapsed", ago(10 * time.Second), ago(10 * time.Second), true, true},
		{"both lapsed, never a storage heartbeat", ago(10 * time.Second), 0, true, true},
		{"host lease lapsed past the isolation timeout, storage valid, isolated", ago(10 * time.Second), ago(100 * time.Millisecond), false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.runRestartable()
			h.a.lease.set(1, c.leaseSent)
			if c.storageAck != 0 {
				h.a.fence.HeartbeatAnswered("shared", c.storageAck, nil, nil)
			}
			if c.peersOK {
				h.a.fence.PeersReached(ago(100 * time.Millisecond))
			}
			h.fence()
			if killed := h.drv.Kills("web") == 1 && !h.drv.Running("web"); killed != c.kill {
				t.Fatalf("killed = %v, want %v", killed, c.kill)
			}
			if c.kill {
				wantEvent(t, h.events("web"), store.EvSelfFence)
			}
		})
	}
}

// A VM self-fencing killed is reported fenced, not crashed: VM monitoring
// does not restart it here, and it costs no restart budget.
func TestSelfFencedVMIsReportedFencedNotRestarted(t *testing.T) {
	h := newHarness(t)
	h.allowNoWatchdog()
	h.runRestartable()
	h.lapseLease()
	h.fence()
	if h.drv.Running("web") {
		t.Fatal("setup: not fenced")
	}
	// The lease is back (a partition healed); the placement is unchanged.
	h.renewLease()
	h.reconcile()
	h.reconcile()
	st := h.status("web")
	if st.State != store.StateFenced || st.Reason != "fenced" || len(st.Restarts) != 0 {
		t.Fatalf("status %+v, want fenced with no restart counted", st)
	}
	if n := h.drv.Count(fake.OpStart, "web"); n != 1 { // the setup's own start
		t.Fatalf("start attempts = %d: VM monitoring restarted a fenced VM", n)
	}
}

// wdWant is what the agent asks of the watchdog feeder.
func (h *harness) wdWant() (bool, time.Duration) {
	h.a.wd.mu.Lock()
	defer h.a.wd.mu.Unlock()
	return h.a.wd.want, h.a.wd.deadline
}

// The watchdog is wanted only while a restartable VM runs here, with the
// deadline at which the leader could restart it elsewhere; a VM HA never
// restarts elsewhere, or none at all, lets it disarm.
func TestWatchdogWantedOnlyWhileRestartableVMRuns(t *testing.T) {
	h := newHarness(t)
	h.fence()
	if want, _ := h.wdWant(); want {
		t.Fatal("watchdog wanted with no VM here")
	}
	if _, err := h.drv.Start(context.Background(), &driver.VMConfig{Name: "plain"}); err != nil {
		t.Fatal(err)
	}
	h.addVM(vmRecord("plain", nil), self, 1)
	h.learn()
	h.fence()
	if want, _ := h.wdWant(); want {
		t.Fatal("watchdog wanted for a VM that HA never restarts elsewhere")
	}
	h.runRestartable()
	h.fence()
	want, d := h.wdWant()
	_, sent, _ := h.a.lease.state()
	if !want || d != hatiming.LeaseEnd(sent, h.a.cfg.LeaseTTL) {
		t.Fatalf("restartable VM running: want %v deadline %s, want true %s", want, d, hatiming.LeaseEnd(sent, h.a.cfg.LeaseTTL))
	}
	h.drv.Crash("web", "")
	h.fence()
	if want, _ := h.wdWant(); want {
		t.Fatal("watchdog still wanted after the last restartable VM ended")
	}
}

// An agent with an unknown VM (nothing learned about it yet, as after a
// restart without its memory) guards it as restartable: when in doubt,
// fence, and keep the watchdog armed.
func TestUnknownVMIsGuardedAsRestartable(t *testing.T) {
	h := newHarness(t)
	if _, err := h.drv.Start(context.Background(), &driver.VMConfig{Name: "mystery"}); err != nil {
		t.Fatal(err)
	}
	h.fence()
	if want, _ := h.wdWant(); !want {
		t.Fatal("watchdog not wanted for an unknown running VM")
	}
	if got := h.a.guardedVMs(); len(got) != 1 || got[0] != "mystery" {
		t.Fatalf("guarded VMs %v", got)
	}
	h.lapseLease()
	h.fence()
	if h.drv.Running("mystery") {
		t.Fatal("an unknown VM survived the loss of both leases")
	}
}

// Maintenance mode on shutdown: the migrate policy puts the host in
// maintenance while restartable VMs run here and reports those that did
// not leave; keep-armed, or a host with nothing restartable, does not.
func TestDrainEntersMaintenanceOnlyWhenVMsMustMove(t *testing.T) {
	maintenance := func(h *harness) bool {
		snap, err := h.st.Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return snap.Maintenance[self]
	}
	drain := func(h *harness) error {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		return h.a.Drain(ctx)
	}

	h := newHarness(t)
	h.a.cfg.ShutdownPolicy = ShutdownKeepArmed
	h.runRestartable()
	if err := drain(h); err != nil || maintenance(h) {
		t.Fatalf("keep-armed: %v, maintenance %v; want neither", err, maintenance(h))
	}

	h = newHarness(t)
	h.a.cfg.ShutdownPolicy = ShutdownMigrate
	if _, err := h.drv.Start(context.Background(), &driver.VMConfig{Name: "plain"}); err != nil {
		t.Fatal(err)
	}
	h.addVM(vmRecord("plain", nil), self, 1)
	h.learn()
	if err := drain(h); err != nil || maintenance(h) {
		t.Fatalf("migrate with nothing restartable: %v, maintenance %v; want neither", err, maintenance(h))
	}

	h.runRestartable()
	err := drain(h)
	if !maintenance(h) {
		t.Fatal("migrate with a restartable VM: host not put in maintenance")
	}
	if err == nil || !strings.Contains(err.Error(), "web") || strings.Contains(err.Error(), "plain") {
		t.Fatalf("drain cut short: %v, want an error naming web (and only web)", err)
	}
	if !h.drv.Running("web") {
		t.Error("drain killed a VM instead of letting it move")
	}
}
