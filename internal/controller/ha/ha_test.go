package ha

import (
	"log/slog"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
)

// TestBusyClass covers the priority gate: only a restart placed by HA,
// not running yet and younger than ClassTimeout holds lower classes back,
// and not once HA gave up on the VM's start.
func TestBusyClass(t *testing.T) {
	c := New(nil, slog.Default(), DefaultConfig(), nil)
	now := time.Now()
	vm := func(prio, state string, placed time.Time, restart bool) *store.VMState {
		return &store.VMState{
			Record:    &store.VMRecord{VM: spec.VM{Spec: spec.VMSpec{HA: spec.HA{Enabled: true, Priority: prio}}}, Power: store.PowerRunning},
			Placement: store.Placement{Host: "h2", Epoch: 2, Time: placed, Restart: restart},
			Status:    &store.VMStatus{Host: "h2", Epoch: 2, State: state},
		}
	}
	snap := &store.Snapshot{VMs: map[string]*store.VMState{
		"med":     vm(spec.PriorityMedium, store.StateStarting, now, true),
		"running": vm(spec.PriorityHigh, store.StateRunning, now, true),
		"old":     vm(spec.PriorityHigh, store.StateStarting, now.Add(-time.Hour), true),
		"user":    vm(spec.PriorityHigh, store.StateStarting, now, false),
	}}
	if got := c.busyClass(snap, now); got != spec.PriorityRank(spec.PriorityMedium) {
		t.Errorf("busyClass = %d, want the medium class (only med is an HA restart in flight)", got)
	}
	snap.VMs["hi"] = vm(spec.PriorityHigh, store.StateFailed, now, true)
	if got := c.busyClass(snap, now); got != spec.PriorityRank(spec.PriorityHigh) {
		t.Errorf("busyClass = %d, want the high class (hi failed once; HA retries it)", got)
	}
	c.gaveUp["hi"] = 2
	if got := c.busyClass(snap, now); got != spec.PriorityRank(spec.PriorityMedium) {
		t.Errorf("busyClass = %d, want the medium class once HA gave up on hi", got)
	}
	delete(snap.VMs, "med")
	if got := c.busyClass(snap, now); got != -1 {
		t.Errorf("busyClass = %d with nothing in flight, want -1", got)
	}
}

// A VM moves for storage loss only when the datastore works for another
// live host right now: one that is down for everyone (its storage server
// restarting, its control process hung) moves nothing.
func TestStorageLostOnlyWhenAnotherHostReachesIt(t *testing.T) {
	c := New(nil, slog.Default(), DefaultConfig(), nil)
	vm := &store.VMState{
		Record:    &store.VMRecord{VM: spec.VM{Spec: spec.VMSpec{Disks: []spec.Disk{{Name: "d", Datastore: "shared"}}}}},
		Placement: store.Placement{Host: "h1", Epoch: 1},
	}
	cut := &store.StorageState{Unreachable: map[string]time.Time{"shared": time.Now()}}
	alive := map[string]store.Alive{"h1": {}, "h2": {}, "h3": {}}
	fresh, stale := storage.HostHeartbeat{Age: 100 * time.Millisecond}, storage.HostHeartbeat{Age: 5 * time.Second}
	for _, tc := range []struct {
		name    string
		storage map[string]*store.StorageState
		hbs     map[string]map[string]storage.HostHeartbeat
		want    bool
	}{
		{"h1 cut, h2 heartbeats fresh: move", map[string]*store.StorageState{"h1": cut},
			map[string]map[string]storage.HostHeartbeat{"shared": {"h1": stale, "h2": fresh}}, true},
		{"h1 cut, the leader cannot read the datastore either: stay", map[string]*store.StorageState{"h1": cut},
			map[string]map[string]storage.HostHeartbeat{}, false},
		{"h1 cut, every heartbeat stale (down for all, h2 not reporting yet): stay", map[string]*store.StorageState{"h1": cut},
			map[string]map[string]storage.HostHeartbeat{"shared": {"h1": stale, "h2": stale, "h3": stale}}, false},
		{"h1 reaches it: stay", map[string]*store.StorageState{},
			map[string]map[string]storage.HostHeartbeat{"shared": {"h1": fresh, "h2": fresh}}, false},
		// The datastore came back: h1's report lags, but the storage hears
		// it again.
		{"h1's report is stale, its heartbeat fresh: stay", map[string]*store.StorageState{"h1": cut},
			map[string]map[string]storage.HostHeartbeat{"shared": {"h1": fresh, "h2": fresh}}, false},
	} {
		c.lostSince = map[string]time.Time{}
		p := &pass{snap: &store.Snapshot{Alive: alive, Storage: tc.storage}, heartbeats: tc.hbs}
		first := c.storageLost(p, vm)
		now := time.Now()
		c.now = func() time.Time { return now.Add(c.cfg.StorageLossConfirm) }
		got := c.storageLost(p, vm)
		c.now = time.Now
		if first || got != tc.want {
			t.Errorf("%s: storageLost = %t at once, %t once confirmed; want false, then %t", tc.name, first, got, tc.want)
		}
	}
}
