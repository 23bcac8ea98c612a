package lifecycle

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// cluster is a lifecycle controller over an in-memory store with one
// shared datastore.
type cluster struct {
	t  *testing.T
	st *memstore.Store
	c  *Controller
}

func newCluster(t *testing.T) *cluster {
	cl := &cluster{t: t, st: memstore.New()}
	cl.st.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared, Server: "storage:1"})
	cl.c = New(cl.st, slog.New(slog.DiscardHandler))
	return cl
}

// addHost registers a host with the shared datastore and a usable
// watchdog, alive or not.
func (cl *cluster) addHost(name string, memGiB int, alive bool) {
	cl.st.AddHost(store.Host{Name: name, Datastores: []string{"shared"},
		Capacity: store.Resources{CPUs: 16, Memory: int64(memGiB) * int64(spec.GiB)},
		Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, alive)
}

// newVM is a VM (not HA) of memGiB on the shared datastore, meant to run,
// not placed yet.
func newVM(name string, memGiB int) store.VMRecord {
	return store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{
		CPUs: 1, Memory: spec.Size(memGiB) * spec.GiB,
		Disks: []spec.Disk{{Name: "root", Datastore: "shared"}},
	}}, Power: store.PowerRunning}
}

// runOn places the VM on host at epoch 1 and reports it there in state.
func (cl *cluster) runOn(vm, host, state, reason string) {
	cl.st.Place(vm, store.Placement{Host: host, Epoch: 1, Reason: "initial placement", Time: time.Now()})
	cl.st.SetStatus(vm, store.VMStatus{State: state, Reason: reason, Host: host, Epoch: 1,
		StartRequest: cl.st.VM(vm).Record.StartRequest})
}

// pass runs one reconcile over a fresh snapshot and returns how soon the
// controller wants another.
func (cl *cluster) pass() time.Duration {
	cl.t.Helper()
	again, err := cl.tryPass()
	if err != nil {
		cl.t.Fatalf("lifecycle pass: %v", err)
	}
	return again
}

func (cl *cluster) tryPass() (time.Duration, error) {
	snap, err := cl.st.Snapshot(context.Background())
	if err != nil {
		cl.t.Fatal(err)
	}
	return cl.c.Reconcile(context.Background(), snap)
}

func (cl *cluster) placement(vm string) store.Placement {
	cl.t.Helper()
	v := cl.st.VM(vm)
	if v == nil {
		cl.t.Fatalf("no VM %s", vm)
	}
	return v.Placement
}

func (cl *cluster) countEvents(vm, typ string) int {
	n := 0
	for _, ev := range cl.st.Events() {
		if ev.VM == vm && ev.Type == typ {
			n++
		}
	}
	return n
}
