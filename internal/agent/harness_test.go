package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vigilha/vigil/internal/agent/fencing"
	"github.com/vigilha/vigil/internal/agent/monitor"
	"github.com/vigilha/vigil/internal/auth"
	"github.com/vigilha/vigil/internal/boottime"
	"github.com/vigilha/vigil/internal/driver"
	"github.com/vigilha/vigil/internal/driver/fake"
	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/storage"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// memState is memstore behind the agent's stateStore seam (the liveness
// key lives on the etcd lease, which memstore does not model).
type memState struct{ *memstore.Store }

func (memState) PutAlive(context.Context, string, clientv3.LeaseID, time.Time) error { return nil }

// LookupToken: the harness's agent serves no endpoint; no token exists.
func (memState) LookupToken(context.Context, string) (*auth.Token, error) {
	return nil, auth.ErrUnknown
}

// harness is one agent on host h1 with an in-memory store and driver,
// holding a valid host lease, without its background loops: a test calls
// the step it wants (reconcile, fenceOnce, checkHeartbeats) and waits for
// the operations it started.
type harness struct {
	t   *testing.T
	a   *Agent
	drv *fake.Driver
	st  *memstore.Store
}

const self = "h1"

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	log := slog.New(slog.DiscardHandler)
	drv := fake.New()
	m := memstore.New()
	m.AddHost(store.Host{Name: self}, true)
	m.AddHost(store.Host{Name: "h2"}, true)
	ttl := 2 * time.Second
	fc := fencing.DefaultConfig()
	a := &Agent{
		cfg:  Config{Host: self, DataDir: dir, Driver: drv, LeaseTTL: ttl, KeepaliveInterval: ttl / 8, StopTimeout: time.Second, Fence: fc, Log: log},
		st:   memState{m},
		drv:  drv,
		log:  log,
		kick: make(chan struct{}, 1), busy: map[string]string{}, killing: map[string]bool{}, fencedBy: map[string]string{},
		wd:       newArmer("", ttl, fc, log),
		evq:      make(chan store.Event, 1024),
		mon:      monitor.NewHistory(),
		restarts: metrics.NewRestarts(), resizeTried: map[string]int64{},
		retryAt: map[string]time.Time{}, heldWait: map[string]int64{},
	}
	a.lease = newLeaseKeeper(nil, ttl, ttl/8, filepath.Join(dir, "lease"), "", log)
	a.fence = fencing.NewMemory("")
	a.migr = a.newMigrations()
	h := &harness{t: t, a: a, drv: drv, st: m}
	h.renewLease()
	return h
}

// renewLease makes the host lease surely valid: just renewed.
func (h *harness) renewLease() { h.a.lease.set(1, boottime.Now()) }

// lapseLease makes the last acknowledged renewal 10 s old.
func (h *harness) lapseLease() { h.a.lease.set(1, boottime.Now()-10*time.Second) }

// reconcile runs one reconcile pass and waits for the operations it
// started.
func (h *harness) reconcile() {
	h.t.Helper()
	if err := h.a.reconcile(context.Background()); err != nil {
		h.t.Fatalf("reconcile: %v", err)
	}
	h.settle()
}

// settle waits until no operation runs on any VM.
func (h *harness) settle() {
	h.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		h.a.mu.Lock()
		n := len(h.a.busy) + len(h.a.killing)
		h.a.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("operations still running after 2 s: %v", h.a.busy)
		}
		time.Sleep(time.Millisecond)
	}
}

// events drains the agent's queued events and returns their types for vm.
func (h *harness) events(vm string) []string {
	var out []string
	for {
		select {
		case ev := <-h.a.evq:
			if ev.VM == vm {
				out = append(out, ev.Type)
			}
		default:
			return out
		}
	}
}

// status is the VM's status in the store.
func (h *harness) status(vm string) *store.VMStatus {
	v := h.st.VM(vm)
	if v == nil {
		return nil
	}
	return v.Status
}

func vmRecord(name string, edit func(*spec.VMSpec)) store.VMRecord {
	rec := store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name},
		Spec: spec.VMSpec{CPUs: 1, Memory: 256 * spec.MiB}}, Power: store.PowerRunning, StartRequest: 1}
	if edit != nil {
		edit(&rec.VM.Spec)
	}
	return rec
}

// haSpec makes a VM an HA VM restarted at most max times an hour.
func haSpec(max int) func(*spec.VMSpec) {
	return func(s *spec.VMSpec) {
		s.HA = spec.HA{Enabled: true, Priority: spec.PriorityMedium, IsolationResponse: spec.IsolationPowerOff,
			Monitoring: spec.Monitoring{MaxFailures: max, FailureWindow: spec.Duration(time.Hour)}}
	}
}

// addVM stores a VM placed on host at epoch.
func (h *harness) addVM(rec store.VMRecord, host string, epoch int64) {
	h.st.AddVM(rec)
	h.st.Place(rec.Name(), store.Placement{Host: host, Epoch: epoch})
}

// allowNoWatchdog lets restartable VMs start on this watchdog-less host.
func (h *harness) allowNoWatchdog() {
	c := store.DefaultClusterConfig()
	c.AllowNoWatchdog = true
	h.st.SetConfig(c)
}

func wantEvent(t *testing.T, got []string, want string) {
	t.Helper()
	for _, e := range got {
		if e == want {
			return
		}
	}
	t.Errorf("events %v, want one %s", got, want)
}

// arbiter is a datastore authority that grants increasing generations
// (or refuses), and records the grants.
type arbiter struct {
	storage.Arbiter // only Grant is used by a start
	mu              sync.Mutex
	gen             storage.Generation
	refuse          error
	grants          []string
}

func (r *arbiter) Grant(_ context.Context, vm storage.VMRef, host string) (storage.Generation, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil {
		return 0, r.refuse
	}
	r.gen++
	r.grants = append(r.grants, vm.Name+"@"+host)
	return r.gen, nil
}

// datastore is a shared datastore whose disks are plain files that exist.
type datastore struct {
	mu       sync.Mutex
	prepared map[storage.Generation]bool
	released int
	deleted  int
}

func (d *datastore) Name() string { return "shared" }
func (d *datastore) Shared() bool { return true }
func (d *datastore) Prepare(_ context.Context, vm storage.VMRef, gen storage.Generation, disk spec.Disk) (driver.DiskConfig, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.prepared == nil {
		d.prepared = map[storage.Generation]bool{}
	}
	d.prepared[gen] = true
	return driver.DiskConfig{Name: disk.Name, Path: "/shared/" + vm.UID + "/" + disk.Name, Format: "qcow2"}, nil
}
func (d *datastore) Release(context.Context, storage.VMRef, spec.Disk) error {
	d.mu.Lock()
	d.released++
	d.mu.Unlock()
	return nil
}
func (d *datastore) Delete(context.Context, storage.VMRef, spec.Disk) error {
	d.mu.Lock()
	d.deleted++
	d.mu.Unlock()
	return nil
}
