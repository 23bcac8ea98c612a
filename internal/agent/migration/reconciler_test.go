package migration

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/agent/monitor"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/driver/fake"
	proto "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// host is the agent as the reconciler sees it, in memory: operations run
// in goroutines the test waits for, and the storage generations are
// recorded.
type host struct {
	mu       sync.Mutex
	wg       sync.WaitGroup
	busy     map[string]string
	events   []string
	prepared map[string]int64
	aborted  []int64
	prepErr  error
	snap     *store.Snapshot
	// heldBy, if set, is a job (a resync) that holds the VM's disks.
	heldBy string
}

func newHost() *host { return &host{busy: map[string]string{}, prepared: map[string]int64{}} }

func (h *host) Do(ctx context.Context, vm, op string, fn func(context.Context)) {
	h.mu.Lock()
	h.busy[vm] = op
	h.mu.Unlock()
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		fn(ctx)
		h.mu.Lock()
		delete(h.busy, vm)
		h.mu.Unlock()
	}()
}

func (h *host) ClaimDiskWork(string, string) (func(), string) {
	if h.heldBy != "" {
		return nil, h.heldBy
	}
	return func() {}, ""
}

func (h *host) Busy(vm string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.busy[vm] != ""
}

func (h *host) Event(_ context.Context, typ, _, _ string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, typ)
}

func (h *host) LastSnapshot() *store.Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.snap
}

func (h *host) VMConfig(_ context.Context, v *store.VMState, grants map[string]int64, _ map[string]*store.Network) (*driver.VMConfig, error) {
	return &driver.VMConfig{Name: v.Record.Name(), UID: v.Record.UID(), Epoch: v.Placement.Epoch, Grants: grants}, nil
}

func (h *host) CoverStart(context.Context, *store.VMState) (func(), error) { return func() {}, nil }

func (h *host) ReleaseDisks(context.Context, *store.VMState) {}

func (h *host) PrepareIncoming(_ context.Context, rec *store.VMRecord, _ int64) (map[string]int64, error) {
	if h.prepErr != nil {
		return nil, h.prepErr
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.prepared["shared"] = 7
	return map[string]int64{"shared": 7}, nil
}

func (h *host) CommitIncoming(context.Context, storage.VMRef, map[string]int64) error { return nil }

func (h *host) AbortIncoming(_ context.Context, _ storage.VMRef, grants map[string]int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.aborted = append(h.aborted, grants["shared"])
}

// setup is a VM "web" running on h1 at epoch 3 with a migration m1 to h2
// scheduled, as the leader's plan writes it.
func setup(t *testing.T) (*memstore.Store, *store.Snapshot) {
	t.Helper()
	st := memstore.New()
	st.AddHost(store.Host{Name: "h1"}, true)
	st.AddHost(store.Host{Name: "h2"}, true)
	rec := store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "web", UID: "u-web"},
		Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB}}, Power: store.PowerRunning, StartRequest: 1}
	st.AddVM(rec)
	st.Place("web", store.Placement{Host: "h1", Epoch: 3})
	st.SetStatus("web", store.VMStatus{Host: "h1", Epoch: 3, State: store.StateRunning})
	if err := st.PutMigrationRequest(context.Background(), "web", &store.MigrationRequest{ID: "m1", To: "h2", Reason: "operator"}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutMigrationPlan(context.Background(), "web", 0, &store.MigrationPlan{ID: "m1", Source: "h1", Target: "h2", Epoch: 3, Phase: proto.Scheduled}); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st, snap
}

func target(t *testing.T, st *memstore.Store) *store.MigrationTarget {
	t.Helper()
	snap, err := st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return snap.Migrations["web"].Target
}

// The destination prepares the VM under a generation the storage
// prepared for it (not granted: the source keeps writing until the
// cut-over), with QEMU waiting for the migration, and reports ready with
// the address it listens on; the source host does nothing yet.
func TestDestinationPreparesUnderAPreparedGeneration(t *testing.T) {
	st, snap := setup(t)
	drv, h := fake.New(), newHost()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := New(Config{Host: "h1", StorageIP: "10.0.2.1"}, newHost(), st, fake.New(), monitor.NewHistory(), slog.New(slog.DiscardHandler))
	src.Reconcile(ctx, snap)
	if src.host.(*host).Busy("web") {
		t.Fatal("the source acted before the destination was ready")
	}
	r := New(Config{Host: "h2", StorageIP: "10.0.2.2"}, h, st, drv, monitor.NewHistory(), slog.New(slog.DiscardHandler))
	r.Reconcile(ctx, snap)
	deadline := time.Now().Add(5 * time.Second)
	for tg := target(t, st); tg == nil || tg.Phase != proto.TargetReady; tg = target(t, st) {
		if time.Now().After(deadline) {
			t.Fatalf("destination report %+v, want ready", tg)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cfg, ok := drv.Config("web")
	if !ok || cfg.Grants["shared"] != 7 || cfg.Incoming == "" || cfg.Epoch != 3 {
		t.Fatalf("destination started with %+v (ok %v), want generation 7, incoming, epoch 3", cfg, ok)
	}
	if tg := target(t, st); tg.ID != "m1" || tg.URI == "" {
		t.Fatalf("ready report %+v, want this migration's ID and a URI", tg)
	}
	cancel()
	h.wg.Wait()
}

// A destination that cannot get a prepared generation reports failed, and
// starts no QEMU.
func TestDestinationWithoutAGenerationFails(t *testing.T) {
	st, snap := setup(t)
	drv, h := fake.New(), newHost()
	h.prepErr = errors.New("datastore shared: refused")
	r := New(Config{Host: "h2", StorageIP: "10.0.2.2"}, h, st, drv, monitor.NewHistory(), slog.New(slog.DiscardHandler))
	r.Reconcile(context.Background(), snap)
	h.wg.Wait()
	if tg := target(t, st); tg == nil || tg.Phase != proto.TargetFailed || tg.Error == "" {
		t.Fatalf("destination report %+v, want failed with the reason", tg)
	}
	if n := drv.Starts("web"); n != 0 {
		t.Fatalf("%d QEMU starts without a generation", n)
	}
}

// A host without a migration address fails the migration at once, with
// the reason, rather than leaving it hanging.
func TestDestinationWithoutStorageAddressFails(t *testing.T) {
	st, snap := setup(t)
	drv, h := fake.New(), newHost()
	r := New(Config{Host: "h2"}, h, st, drv, monitor.NewHistory(), slog.New(slog.DiscardHandler))
	r.Reconcile(context.Background(), snap)
	h.wg.Wait()
	if tg := target(t, st); tg == nil || tg.Phase != proto.TargetFailed {
		t.Fatalf("destination report %+v, want failed", tg)
	}
	if drv.Starts("web") != 0 {
		t.Fatal("a QEMU was started anyway")
	}
}

// A destination in post-copy whose QEMU monitor stops answering (as it can
// while the guest waits on pages from a dead source) is still killed once
// the source host's lease is gone: the guest's memory is lost, and waiting
// on the monitor would leave the VM hung for good.
func TestPostcopyDestinationKilledWhenSourceDiesAndMonitorHangs(t *testing.T) {
	drv, h := fake.New(), newHost()
	if _, err := drv.Start(context.Background(), &driver.VMConfig{Name: "web", UID: "u-web", Incoming: "defer"}); err != nil {
		t.Fatal(err)
	}
	drv.SetUnresponsive("web", true)
	h.snap = &store.Snapshot{Alive: map[string]store.Alive{"h2": {}}} // h1, the source, is gone
	r := New(Config{Host: "h2", StorageIP: "10.0.2.2"}, h, memstore.New(), drv, monitor.NewHistory(), slog.New(slog.DiscardHandler))
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.watchPostcopy(context.Background(), drv, "web", "h1")
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the destination was left running with its source gone")
	}
	if drv.Running("web") {
		t.Fatal("the destination still runs")
	}
}

// A source whose VM a resync of its replicated disks holds does not start
// the migration (the resync's pause and resume would interleave with it):
// it reports failed at once, saying why.
func TestSourceHeldByResyncFailsAtOnce(t *testing.T) {
	st, _ := setup(t)
	if err := st.PutMigrationTarget(context.Background(), "web", &store.MigrationTarget{ID: "m1", Phase: proto.TargetReady, URI: "tcp:10.0.2.2:4444"}); err != nil {
		t.Fatal(err)
	}
	snap, err := st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	drv, h := fake.New(), newHost()
	if _, err := drv.Start(context.Background(), &driver.VMConfig{Name: "web", UID: "u-web"}); err != nil {
		t.Fatal(err)
	}
	h.heldBy = "resync"
	r := New(Config{Host: "h1", StorageIP: "10.0.2.1"}, h, st, drv, monitor.NewHistory(), slog.New(slog.DiscardHandler))
	r.Reconcile(context.Background(), snap)
	h.wg.Wait()
	snap, err = st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	src := snap.Migrations["web"].Source
	if src == nil || src.ID != "m1" || src.Phase != proto.SourceFailed || !strings.Contains(src.Error, "resync") {
		t.Fatalf("source report %+v, want failed, naming the resync", src)
	}
	if !drv.Running("web") {
		t.Fatal("the VM stopped")
	}
}
