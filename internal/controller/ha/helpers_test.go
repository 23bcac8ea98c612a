package ha

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// The timing of the tests' controller: explicit, so that a change of the
// agents' defaults does not change what the tests prove.
const (
	tGrace        = time.Second
	tIsolation    = 10 * time.Second
	tStorageStale = 2 * time.Second
	tClassTimeout = 30 * time.Second
	tDepTimeout   = 60 * time.Second
	tLossConfirm  = 2 * time.Second
	tMaxFailures  = 3
)

func testConfig() Config {
	return Config{Grace: tGrace, IsolationTimeout: tIsolation, StorageStale: tStorageStale, SuspectAfter: 750 * time.Millisecond,
		ClassTimeout: tClassTimeout, DependencyTimeout: tDepTimeout, StorageLossConfirm: tLossConfirm, MaxStartFailures: tMaxFailures}
}

// Heartbeats as the datastore reports them.
var (
	fresh = storage.HostHeartbeat{Age: 100 * time.Millisecond}
	stale = storage.HostHeartbeat{Age: 5 * time.Second}
)

// cluster is an HA controller over an in-memory store, with one shared
// datastore ("shared", served by a fake arbiter) and a clock the test
// moves.
type cluster struct {
	t   *testing.T
	st  *memstore.Store
	arb *fakeArbiter
	c   *Controller
	now time.Time
}

// newCluster registers the hosts, alive, each with 16 vCPUs, 16 GiB, a
// usable watchdog and the shared datastore. Every host has a fresh
// datastore heartbeat; a test that kills a host drops it (killHost).
func newCluster(t *testing.T, hosts ...string) *cluster {
	t.Helper()
	cl := &cluster{t: t, st: memstore.New(), arb: newFakeArbiter(), now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
	cl.st.Now = func() time.Time { return cl.now }
	cl.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared, Server: "storage:1"})
	for _, h := range hosts {
		cl.addHost(h, 16, 16*spec.GiB)
	}
	cl.c = New(cl.st, slog.New(slog.DiscardHandler), testConfig(), func(*store.Datastore) storage.Arbiter { return cl.arb })
	cl.c.now = func() time.Time { return cl.now }
	return cl
}

// addHost registers a live host with a watchdog and the shared datastore.
func (cl *cluster) addHost(name string, cpus int, mem spec.Size) {
	cl.st.AddHost(store.Host{Name: name, Datastores: []string{"shared"},
		Capacity: store.Resources{CPUs: cpus, Memory: int64(mem)},
		Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
	cl.arb.setHeartbeat(name, fresh)
}

// killHost is a dead host: its lease expired and it no longer heartbeats
// at the datastore.
func (cl *cluster) killHost(name string) {
	cl.st.SetAlive(name, false)
	cl.arb.dropHeartbeat(name)
}

// vmOpt changes a VM's record before it is stored.
type vmOpt func(*store.VMRecord)

func leaveRunning(r *store.VMRecord) { r.VM.Spec.HA.IsolationResponse = spec.IsolationLeaveRunning }

func restartAfter(deps ...string) vmOpt {
	return func(r *store.VMRecord) { r.VM.Spec.HA.RestartAfter = deps }
}

func memory(m spec.Size) vmOpt { return func(r *store.VMRecord) { r.VM.Spec.Memory = m } }

// haVM is an HA VM of the given priority, 1 vCPU and 1 GiB, its disk on
// the shared datastore, meant to run.
func haVM(name, prio string, opts ...vmOpt) store.VMRecord {
	r := store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{
		CPUs: 1, Memory: spec.GiB,
		HA:    spec.HA{Enabled: true, Priority: prio, IsolationResponse: spec.IsolationPowerOff},
		Disks: []spec.Disk{{Name: "root", Datastore: "shared"}},
	}}, Power: store.PowerRunning}
	for _, o := range opts {
		o(&r)
	}
	return r
}

// run stores the VM running on host at epoch 1, as its agent reported it.
func (cl *cluster) run(rec store.VMRecord, host string) {
	cl.st.AddVM(rec)
	cl.st.Place(rec.Name(), store.Placement{Host: host, Epoch: 1, Reason: "initial placement", Time: cl.now})
	cl.st.SetStatus(rec.Name(), store.VMStatus{State: store.StateRunning, Host: host, Epoch: 1, UpdatedAt: cl.now})
	cl.arb.addVM(host, rec.Name())
}

// report sets the VM's status at its current placement, as its agent
// reports it there.
func (cl *cluster) report(vm, state, reason string) {
	cl.t.Helper()
	v := cl.st.VM(vm)
	if v == nil {
		cl.t.Fatalf("no VM %s", vm)
	}
	cl.st.SetStatus(vm, store.VMStatus{State: state, Reason: reason, Host: v.Placement.Host, Epoch: v.Placement.Epoch,
		StartRequest: v.Record.StartRequest, UpdatedAt: cl.now})
}

// running reports the VM running at its current placement.
func (cl *cluster) running(vm string) { cl.report(vm, store.StateRunning, "") }

// pass runs one reconcile over a fresh snapshot, as the manager does, and
// fails the test on an error.
// newLeader replaces the controller with a fresh one, as when another
// server takes the leadership: everything it knows comes from the store.
func (cl *cluster) newLeader() {
	cl.c = New(cl.st, slog.New(slog.DiscardHandler), testConfig(), func(*store.Datastore) storage.Arbiter { return cl.arb })
	cl.c.now = func() time.Time { return cl.now }
}

func (cl *cluster) pass() {
	cl.t.Helper()
	if err := cl.tryPass(); err != nil {
		cl.t.Fatalf("HA pass: %v", err)
	}
}

func (cl *cluster) tryPass() error {
	snap, err := cl.st.Snapshot(context.Background())
	if err != nil {
		cl.t.Fatal(err)
	}
	_, err = cl.c.Reconcile(context.Background(), snap)
	return err
}

func (cl *cluster) advance(d time.Duration) { cl.now = cl.now.Add(d) }

// placement is the VM's current placement.
func (cl *cluster) placement(vm string) store.Placement {
	cl.t.Helper()
	v := cl.st.VM(vm)
	if v == nil {
		cl.t.Fatalf("no VM %s", vm)
	}
	return v.Placement
}

// fence is the VM's recorded fence, or nil.
func (cl *cluster) fence(vm string) *store.Fence {
	snap, err := cl.st.Snapshot(context.Background())
	if err != nil {
		cl.t.Fatal(err)
	}
	return snap.Fences[vm]
}

// countEvents counts the events of type typ about vm ("" for any VM).
func (cl *cluster) countEvents(vm, typ string) int {
	n := 0
	for _, ev := range cl.st.Events() {
		if (vm == "" || ev.VM == vm) && ev.Type == typ {
			n++
		}
	}
	return n
}

// wantOn fails unless the VM is placed on host (not evicting).
func (cl *cluster) wantOn(vm, host string) {
	cl.t.Helper()
	if p := cl.placement(vm); p.Host != host || p.Evict {
		cl.t.Fatalf("%s is placed %+v, want on %s", vm, p, host)
	}
}

// wantUnmoved fails unless the VM is still where run put it.
func (cl *cluster) wantUnmoved(vm, host string) {
	cl.t.Helper()
	if p := cl.placement(vm); p.Host != host || p.Epoch != 1 {
		cl.t.Fatalf("%s moved: placement %+v, want %s at epoch 1", vm, p, host)
	}
}

// restartedOff fails unless the VM was restarted by HA on a host other
// than from, and returns that host.
func (cl *cluster) restartedOff(vm, from string) string {
	cl.t.Helper()
	p := cl.placement(vm)
	if p.Host == "" || p.Host == from || p.Evict || p.Epoch < 2 {
		cl.t.Fatalf("%s was not restarted off %s: placement %+v", vm, from, p)
	}
	return p.Host
}

// eventIndex is the position of the first event of type typ about vm, or -1.
func (cl *cluster) eventIndex(vm, typ string) int {
	return slices.IndexFunc(cl.st.Events(), func(ev store.Event) bool { return ev.VM == vm && ev.Type == typ })
}
