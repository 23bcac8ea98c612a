package observe

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vigilha/vigil/internal/metrics"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// TestFailoverIsTimedFromTheLeaseExpiry: a VM restarted by HA counts one
// failover, timed from the first pass that saw its old host without a
// lease to the first that sees it running on the new one; a fence counts
// once; what the first pass finds (an earlier term's) counts nothing.
func TestFailoverIsTimedFromTheLeaseExpiry(t *testing.T) {
	f := newFixture(t)
	st, m, pass := f.st, f.m, f.pass
	now := f.now
	pass()
	*now = now.Add(time.Second)
	st.SetAlive("h1", false)
	pass() // the lease expiry is seen here
	*now = now.Add(2 * time.Second)
	if err := st.PutFence(context.Background(), "web1", &store.Fence{Host: "h1", Epoch: 1, Time: *now}); err != nil {
		t.Fatal(err)
	}
	st.Place("web1", store.Placement{Host: "h2", Epoch: 2, Restart: true})
	pass()
	*now = now.Add(3 * time.Second)
	st.SetStatus("web1", store.VMStatus{State: store.StateRunning, Host: "h2", Epoch: 2})
	pass()
	pass()
	if n := testutil.CollectAndCount(m.Failovers); n != 1 {
		t.Fatalf("%d failover series", n)
	}
	if got := testutil.ToFloat64(m.Fences); got != 1 {
		t.Fatalf("fences %v, want 1", got)
	}
	h := histogram(t, m)
	if h.count != 1 || h.sum != 5 {
		t.Fatalf("failover histogram count %d sum %v, want 1 and 5 s (lease expiry seen -> running)", h.count, h.sum)
	}
	// A new leader finds the same restart: it counts nothing again.
	m2 := metrics.NewCluster(st.Snapshot, func(*store.VMState) string { return "x" })
	o2 := New(m2)
	snap, _ := st.Snapshot(context.Background())
	_, _ = o2.Reconcile(context.Background(), snap)
	if h := histogram(t, m2); h.count != 0 || testutil.ToFloat64(m2.Fences) != 0 {
		t.Fatalf("a new term counted what happened before it: %+v", h)
	}
}

// A fence that says when the dead host was last heard at its datastore
// times the failover from then: closer to the crash than the lease expiry.
func TestFailoverIsTimedFromTheLastHeartbeat(t *testing.T) {
	f := newFixture(t)
	st, m, pass := f.st, f.m, f.pass
	now := f.now
	pass()
	crash := now.Add(500 * time.Millisecond) // the last heartbeat went out just before
	*now = now.Add(3 * time.Second)
	st.SetAlive("h1", false)
	pass() // the lease expiry is seen here, 2.5 s after the last heartbeat
	*now = now.Add(time.Second)
	if err := st.PutFence(context.Background(), "web1", &store.Fence{Host: "h1", Epoch: 1, Time: *now, LastHeard: crash}); err != nil {
		t.Fatal(err)
	}
	st.Place("web1", store.Placement{Host: "h2", Epoch: 2, Restart: true})
	pass()
	*now = now.Add(2 * time.Second)
	st.SetStatus("web1", store.VMStatus{State: store.StateRunning, Host: "h2", Epoch: 2})
	pass()
	if h := histogram(t, m); h.count != 1 || h.sum != 5.5 {
		t.Fatalf("failover histogram count %d sum %v, want 1 and 5.5 s (last heartbeat -> running)", h.count, h.sum)
	}
}

// fixture is an observer over a store with web1 running on h1, and a
// clock the test moves (now).
type fixture struct {
	st  *memstore.Store
	m   *metrics.Cluster
	now *time.Time
	// pass runs one observer pass over a fresh snapshot.
	pass func()
}

func newFixture(t *testing.T) *fixture {
	now := time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)
	f := &fixture{st: memstore.New(), now: &now}
	f.st.Now = func() time.Time { return now }
	for _, h := range []string{"h1", "h2"} {
		f.st.AddHost(store.Host{Name: h}, true)
	}
	f.st.AddVM(store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "web1", UID: "u1"}, Spec: spec.VMSpec{CPUs: 1, Memory: spec.GiB}}, Power: store.PowerRunning})
	f.st.Place("web1", store.Placement{Host: "h1", Epoch: 1})
	f.st.SetStatus("web1", store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1})
	f.m = metrics.NewCluster(f.st.Snapshot, func(*store.VMState) string { return "x" })
	o := New(f.m)
	o.now = func() time.Time { return now }
	f.pass = func() {
		t.Helper()
		snap, err := f.st.Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := o.Reconcile(context.Background(), snap); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

type hist struct {
	count uint64
	sum   float64
}

func histogram(t *testing.T, m *metrics.Cluster) hist {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == metrics.Failovers.Name {
			h := f.GetMetric()[0].GetHistogram()
			return hist{h.GetSampleCount(), h.GetSampleSum()}
		}
	}
	t.Fatal("no failover histogram")
	return hist{}
}
