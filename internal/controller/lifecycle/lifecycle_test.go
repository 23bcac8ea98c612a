package lifecycle

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// A new VM is placed, at epoch 1, on a host with room for it, and the
// placement is announced.
func TestNewVMPlacedOnHostWithCapacity(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 4, true) // sorts first, too small
	cl.addHost("h2", 16, true)
	cl.st.AddVM(newVM("vm1", 8))
	if again := cl.pass(); again != 0 {
		t.Errorf("asked for another pass in %s after placing everything", again)
	}
	p := cl.placement("vm1")
	if p.Host != "h2" || p.Epoch != 1 || p.Reason != "initial placement" {
		t.Errorf("placement %+v, want h2 at epoch 1 (initial placement)", p)
	}
	if n := cl.countEvents("vm1", store.EvVMPlaced); n != 1 {
		t.Errorf("%d vm.placed events, want 1", n)
	}
}

// Placement skips a host whose lease expired and a host in maintenance,
// even when they are the emptiest.
func TestPlacementSkipsDownAndMaintenanceHosts(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 64, false)
	cl.addHost("h2", 64, true)
	if err := cl.st.SetMaintenance(t.Context(), "h2", true, store.Maintenance{Since: time.Now()}); err != nil {
		t.Fatal(err)
	}
	cl.addHost("h3", 8, true)
	cl.st.AddVM(newVM("vm1", 4))
	cl.pass()
	if p := cl.placement("vm1"); p.Host != "h3" {
		t.Errorf("placed on %q, want h3 (h1 down, h2 in maintenance)", p.Host)
	}
}

// A VM that fits no host is left unplaced, with one vm.unplaceable event
// (not one per pass) and a retry in a few seconds; it is placed once a
// host that fits appears.
func TestNoHostFitsLeavesVMUnplacedWithOneEvent(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 16, true)
	cl.st.AddVM(newVM("big", 32))
	for range 3 {
		if again := cl.pass(); again <= 0 {
			t.Errorf("an unplaceable VM asked for no retry (again %s)", again)
		}
	}
	if p := cl.placement("big"); p.Host != "" || p.Epoch != 0 {
		t.Errorf("placement %+v, want none", p)
	}
	if n := cl.countEvents("big", store.EvVMUnplaceable); n != 1 {
		t.Errorf("%d vm.unplaceable events over three passes, want 1", n)
	}

	cl.addHost("h2", 64, true)
	cl.pass()
	if p := cl.placement("big"); p.Host != "h2" {
		t.Errorf("placed on %q once h2 appeared, want h2", p.Host)
	}
}

// An HA VM (restartable elsewhere) goes only to a host with a usable
// watchdog, unless the cluster allows hosts without one.
func TestHAVMNeedsHostWithWatchdog(t *testing.T) {
	for _, allow := range []bool{false, true} {
		cl := newCluster(t)
		cl.st.AddHost(store.Host{Name: "bare", Datastores: []string{"shared"},
			Capacity: store.Resources{CPUs: 64, Memory: int64(64 * spec.GiB)}}, true) // the emptiest, no watchdog
		cl.addHost("guarded", 8, true)
		if allow {
			cl.st.SetConfig(store.ClusterConfig{AllowNoWatchdog: true})
		}
		rec := newVM("vm1", 1)
		rec.VM.Spec.HA = spec.HA{Enabled: true, Priority: spec.PriorityHigh}
		cl.st.AddVM(rec)
		cl.pass()
		want := "guarded"
		if allow {
			want = "bare"
		}
		if p := cl.placement("vm1"); p.Host != want {
			t.Errorf("allow-no-watchdog %t: placed on %q, want %s", allow, p.Host, want)
		}
	}
}

// A VM meant to be off is not placed, and a stopped VM keeps its
// placement (its host stays the one that holds its stopped state; the
// lifecycle controller never clears a placement).
func TestStoppedVMIsNotPlacedAndKeepsItsPlacement(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 16, true)
	cl.addHost("h2", 16, true)
	off := newVM("off", 1)
	off.Power = store.PowerStopped
	cl.st.AddVM(off)
	stopped := newVM("stopped", 1)
	stopped.Power = store.PowerStopped
	cl.st.AddVM(stopped)
	cl.runOn("stopped", "h2", store.StateStopped, "user")
	cl.pass()
	cl.pass()
	if p := cl.placement("off"); p.Host != "" {
		t.Errorf("a VM meant to be off was placed: %+v", p)
	}
	if p := cl.placement("stopped"); p.Host != "h2" || p.Epoch != 1 {
		t.Errorf("the stopped VM's placement changed: %+v, want h2 at epoch 1", p)
	}
	if evs := cl.st.EventTypes(""); len(evs) != 0 {
		t.Errorf("events %v for VMs meant to be off", evs)
	}
}

// A guest that powered itself off is powered off (desired state stopped),
// not restarted; unless the stop is older than the latest `vm start`, or
// the VM stopped for another reason.
func TestGuestPowerOffBecomesDesiredStopped(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reason    string
		staleStop bool // a `vm start` came after the guest's power-off
		wantPower string
	}{
		{"guest powered off", "guest-poweroff", false, store.PowerStopped},
		{"guest powered off before the latest start", "guest-poweroff", true, store.PowerRunning},
		{"stopped for another reason", "evicted", false, store.PowerRunning},
	} {
		cl := newCluster(t)
		cl.addHost("h1", 16, true)
		cl.st.AddVM(newVM("vm1", 1))
		cl.runOn("vm1", "h1", store.StateStopped, tc.reason)
		if tc.staleStop {
			cl.st.SetRecord("vm1", func(r *store.VMRecord) { r.StartRequest++ })
		}
		cl.pass()
		v := cl.st.VM("vm1")
		if v.Record.Power != tc.wantPower {
			t.Errorf("%s: desired power %q, want %q", tc.name, v.Record.Power, tc.wantPower)
		}
		if v.Placement.Host != "h1" || v.Placement.Epoch != 1 {
			t.Errorf("%s: placement changed: %+v", tc.name, v.Placement)
		}
	}
}

// A deleted VM's keys go once its host reports it cleaned up, or at once
// when no host holds it (never placed, or its host is no longer
// registered); not while its host still runs it.
func TestDeleteWaitsForHostCleanup(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 16, true)
	for _, name := range []string{"busy", "unplaced", "orphan"} {
		cl.st.AddVM(newVM(name, 1))
	}
	cl.runOn("busy", "h1", store.StateRunning, "")
	cl.st.Place("orphan", store.Placement{Host: "gone", Epoch: 3})
	for _, name := range []string{"busy", "unplaced", "orphan"} {
		cl.st.SetRecord(name, func(r *store.VMRecord) { r.Deleting = true })
	}
	cl.pass()
	for _, name := range []string{"unplaced", "orphan"} {
		if v := cl.st.VM(name); v != nil {
			t.Errorf("%s is still stored", name)
		}
		if n := cl.countEvents(name, store.EvVMDeleted); n != 1 {
			t.Errorf("%s: %d vm.deleted events, want 1", name, n)
		}
	}
	if v := cl.st.VM("busy"); v == nil {
		t.Fatal("busy was deleted while h1 still runs it")
	}
	if p := cl.placement("busy"); p.Host != "h1" {
		t.Errorf("a deleting VM was moved: %+v", p)
	}

	cl.runOn("busy", "h1", store.StateDeleted, "")
	cl.pass()
	if v := cl.st.VM("busy"); v != nil {
		t.Error("busy is still stored after its host reported it deleted")
	}
}

// A stale leader places nothing and turns nothing off.
func TestStaleLeaderPlacesNothing(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 16, true)
	cl.st.AddVM(newVM("new", 1))
	cl.st.AddVM(newVM("guest", 1))
	cl.runOn("guest", "h1", store.StateStopped, "guest-poweroff")
	cl.st.EndTerm()
	if _, err := cl.tryPass(); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("the stale pass: %v, want ErrNotLeader", err)
	}
	if p := cl.placement("new"); p.Host != "" {
		t.Errorf("the stale leader placed a VM: %+v", p)
	}
	if v := cl.st.VM("guest"); v.Record.Power != store.PowerRunning {
		t.Error("the stale leader changed a VM's desired power")
	}
	if n := cl.countEvents("new", store.EvVMPlaced); n != 0 {
		t.Error("the stale leader announced a placement")
	}
}

// A placement written since the snapshot (by another pass, another
// leader) wins: the controller's compare-and-swap fails quietly, the pass
// is not an error, and nothing is announced.
func TestPlacementRaceLosesQuietly(t *testing.T) {
	cl := newCluster(t)
	cl.addHost("h1", 16, true)
	cl.addHost("h2", 16, true)
	cl.st.AddVM(newVM("vm1", 1))
	snap, err := cl.st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cl.st.Place("vm1", store.Placement{Host: "h2", Epoch: 1, Reason: "the other writer"})
	if _, err := cl.c.Reconcile(context.Background(), snap); err != nil {
		t.Errorf("a lost placement race is an error: %v", err)
	}
	if p := cl.placement("vm1"); p.Host != "h2" || p.Reason != "the other writer" {
		t.Errorf("placement %+v, want the other writer's", p)
	}
	if n := cl.countEvents("vm1", store.EvVMPlaced); n != 0 {
		t.Errorf("%d vm.placed events for a placement that lost the race", n)
	}
}
