package migration

import (
	"context"
	"log/slog"
	"testing"
	"time"

	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// cluster is a migration controller over an in-memory store with one
// shared datastore and a host-local one, and a clock the test moves.
type cluster struct {
	t   *testing.T
	ctx context.Context
	st  *memstore.Store
	c   *Controller
	now time.Time
}

// newCluster registers the hosts, alive, 16 vCPUs and 16 GiB each.
func newCluster(t *testing.T, hosts ...string) *cluster {
	cl := &cluster{t: t, ctx: context.Background(), st: memstore.New(), now: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
	cl.st.Now = func() time.Time { return cl.now }
	cl.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared, Server: "storage:1"})
	cl.st.AddDatastore(store.Datastore{Name: "local", Type: store.DatastoreLocal})
	for _, h := range hosts {
		cl.addHost(h, 16)
	}
	cl.c = New(cl.st, slog.New(slog.DiscardHandler))
	cl.c.now = func() time.Time { return cl.now }
	return cl
}

func (cl *cluster) addHost(name string, memGiB int) {
	cl.st.AddHost(store.Host{Name: name, Datastores: []string{"shared", "local"},
		Capacity: store.Resources{CPUs: 16, Memory: int64(memGiB) * int64(spec.GiB)},
		Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
}

func (cl *cluster) maintenance(host string) {
	cl.t.Helper()
	if err := cl.st.SetMaintenance(cl.ctx, host, true, store.Maintenance{Since: cl.now}); err != nil {
		cl.t.Fatal(err)
	}
}

// run stores a VM of memGiB (disk on the shared datastore) running on
// host at epoch 1.
func (cl *cluster) run(name, host string, memGiB int, edit ...func(*store.VMRecord)) {
	rec := store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{
		CPUs: 1, Memory: spec.Size(memGiB) * spec.GiB,
		Disks: []spec.Disk{{Name: "root", Datastore: "shared"}},
	}}, Power: store.PowerRunning}
	for _, e := range edit {
		e(&rec)
	}
	cl.st.AddVM(rec)
	cl.st.Place(name, store.Placement{Host: host, Epoch: 1, Reason: "initial placement", Time: cl.now})
	cl.st.SetStatus(name, store.VMStatus{State: store.StateRunning, Host: host, Epoch: 1})
}

// request asks to migrate vm (to "" lets placement choose).
func (cl *cluster) request(vm, id, to string) {
	cl.t.Helper()
	if err := cl.st.PutMigrationRequest(cl.ctx, vm, &store.MigrationRequest{ID: id, To: to, Reason: "operator", RequestedAt: cl.now}); err != nil {
		cl.t.Fatal(err)
	}
}

// sourceReports is the source agent's report for migration id.
func (cl *cluster) sourceReports(vm, id string, ph proto.SourcePhase, errMsg string) {
	cl.t.Helper()
	if err := cl.st.PutMigrationSource(cl.ctx, vm, &store.MigrationSource{ID: id, Phase: ph, Error: errMsg, UpdatedAt: cl.now,
		Progress: store.MigrationProgress{DowntimeMS: 42, TotalMS: 1234}}); err != nil {
		cl.t.Fatal(err)
	}
}

// targetReports is the destination agent's report for migration id.
func (cl *cluster) targetReports(vm, id string, ph proto.TargetPhase, errMsg string) {
	cl.t.Helper()
	if err := cl.st.PutMigrationTarget(cl.ctx, vm, &store.MigrationTarget{ID: id, Phase: ph, Error: errMsg, UpdatedAt: cl.now}); err != nil {
		cl.t.Fatal(err)
	}
}

func (cl *cluster) pass() {
	cl.t.Helper()
	if err := cl.tryPass(); err != nil {
		cl.t.Fatalf("migration pass: %v", err)
	}
}

func (cl *cluster) tryPass() error {
	snap, err := cl.st.Snapshot(cl.ctx)
	if err != nil {
		cl.t.Fatal(err)
	}
	_, err = cl.c.Reconcile(cl.ctx, snap)
	return err
}

func (cl *cluster) migration(vm string) *store.MigrationState {
	cl.t.Helper()
	snap, err := cl.st.Snapshot(cl.ctx)
	if err != nil {
		cl.t.Fatal(err)
	}
	return snap.Migrations[vm]
}

// plan is the VM's migration plan; the test fails if there is none.
func (cl *cluster) plan(vm string) *store.MigrationPlan {
	cl.t.Helper()
	m := cl.migration(vm)
	if m == nil || m.Plan == nil {
		cl.t.Fatalf("%s has no migration plan", vm)
	}
	return m.Plan
}

func (cl *cluster) placement(vm string) store.Placement {
	cl.t.Helper()
	v := cl.st.VM(vm)
	if v == nil {
		cl.t.Fatalf("no VM %s", vm)
	}
	return v.Placement
}

// wantOnSource fails unless the VM is still placed where run put it.
func (cl *cluster) wantOnSource(vm, host string) {
	cl.t.Helper()
	if p := cl.placement(vm); p.Host != host || p.Epoch != 1 {
		cl.t.Fatalf("%s placed %+v, want still on %s at epoch 1", vm, p, host)
	}
}

func (cl *cluster) countEvents(vm, typ string) int {
	n := 0
	for _, ev := range cl.st.Events() {
		if (vm == "" || ev.VM == vm) && ev.Type == typ {
			n++
		}
	}
	return n
}

// scheduled plans the migration of vm (one pass) and fails unless it is
// scheduled.
func (cl *cluster) scheduled(vm, id, to string) *store.MigrationPlan {
	cl.t.Helper()
	cl.request(vm, id, to)
	cl.pass()
	p := cl.plan(vm)
	if p.ID != id || p.Phase != proto.Scheduled {
		cl.t.Fatalf("plan %+v, want %s scheduled", p, id)
	}
	return p
}
