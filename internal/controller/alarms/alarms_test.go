package alarms

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// fakeStore adds alarm records to the in-memory store.
type fakeStore struct {
	*memstore.Store
	mu     sync.Mutex
	defs   map[string]*alarm.Definition
	insts  map[string]*alarm.Instance
	rev    int64
	seeded bool
	moves  []string
}

func (f *fakeStore) Alarms(context.Context) (map[string]*alarm.Definition, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]*alarm.Definition{}
	for k, v := range f.defs {
		out[k] = v
	}
	return out, nil
}

func (f *fakeStore) SeedAlarms(_ context.Context, defs []*alarm.Definition) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seeded {
		return false, nil
	}
	f.seeded = true
	for _, d := range defs {
		f.defs[d.Name()] = d
	}
	return true, nil
}

func (f *fakeStore) AlarmInstances(context.Context) ([]*alarm.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*alarm.Instance
	for _, in := range f.insts {
		cp := *in
		out = append(out, &cp)
	}
	return out, nil
}

func (f *fakeStore) CASAlarmInstance(_ context.Context, key string, rev int64, in *alarm.Instance) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var cur int64
	if old := f.insts[key]; old != nil {
		cur = old.Rev
	}
	if cur != rev {
		return 0, store.ErrConflict
	}
	if in == nil {
		delete(f.insts, key)
		return 0, nil
	}
	f.rev++
	cp := *in
	cp.Rev = f.rev
	f.insts[key] = &cp
	return f.rev, nil
}

func (f *fakeStore) PutMigrationRequest(ctx context.Context, vm string, r *store.MigrationRequest) error {
	f.mu.Lock()
	f.moves = append(f.moves, vm+":"+r.Reason)
	f.mu.Unlock()
	return f.Store.PutMigrationRequest(ctx, vm, r)
}

// scripted serves each host's metrics from what the test sets.
type scripted struct {
	mu  sync.Mutex
	now *time.Time
	cpu map[string]float64 // vm -> CPU seconds so far
	on  map[string]string  // vm -> host
}

func (s *scripted) Scrape(_ context.Context, host, _ string) (*alarm.Scrape, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := &alarm.Scrape{Host: host, At: *s.now, Series: map[string][]alarm.Sample{}}
	add := func(name string, v float64, labels ...string) {
		l := map[string]string{}
		for i := 0; i+1 < len(labels); i += 2 {
			l[labels[i]] = labels[i+1]
		}
		sc.Series[name] = append(sc.Series[name], alarm.Sample{Labels: l, Value: v})
	}
	add("vigil_host_capacity_cpus", 16, "host", host)
	for vm, h := range s.on {
		if h != host {
			continue
		}
		add("vigil_vm_running", 1, "vm", vm, "host", host)
		add("vigil_vm_start_timestamp_seconds", 1000, "vm", vm, "host", host)
		add("vigil_vm_vcpus", 1, "vm", vm, "host", host)
		add("vigil_vm_cpu_seconds_total", s.cpu[vm], "vm", vm, "host", host)
	}
	return sc, nil
}

type rig struct {
	t     *testing.T
	st    *fakeStore
	sc    *scripted
	c     *Controller
	now   time.Time
	hooks chan Notification
}

func newRig(t *testing.T) *rig {
	r := &rig{t: t, now: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC), hooks: make(chan Notification, 16)}
	ms := memstore.New()
	ms.Now = func() time.Time { return r.now }
	ms.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared, Server: "storage:1"})
	for _, h := range []string{"h1", "h2"} {
		ms.AddHost(store.Host{Name: h, Datastores: []string{"shared"}, AgentURL: "http://" + h + ":7483",
			Capacity: store.Resources{CPUs: 16, Memory: int64(16 * spec.GiB)},
			Fencing:  store.Fencing{Watchdog: &store.WatchdogState{Device: "/dev/watchdog", Usable: true}}}, true)
	}
	rec := store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: "web1", UID: "u1"}, Spec: spec.VMSpec{CPUs: 1, Memory: spec.GiB,
		Disks: []spec.Disk{{Name: "root", Datastore: "shared"}}}}, Power: store.PowerRunning}
	ms.AddVM(rec)
	ms.Place("web1", store.Placement{Host: "h1", Epoch: 1, Time: r.now})
	ms.SetStatus("web1", store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1, UpdatedAt: r.now})
	r.st = &fakeStore{Store: ms, defs: map[string]*alarm.Definition{}, insts: map[string]*alarm.Instance{}}
	r.sc = &scripted{now: &r.now, cpu: map[string]float64{"web1": 0}, on: map[string]string{"web1": "h1"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var n Notification
		if err := json.NewDecoder(req.Body).Decode(&n); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		r.hooks <- n
	}))
	t.Cleanup(srv.Close)
	d, err := alarm.Parse([]byte(fmt.Sprintf(`
metadata: {name: web-cpu}
spec:
  metric: vm.cpu
  operator: ">"
  threshold: 0.8
  for: 30s
  clearFor: 20s
  severity: critical
  actions: [{type: webhook, url: %q}, {type: migrate-away}]
`, srv.URL)))
	if err != nil {
		t.Fatal(err)
	}
	r.st.defs[d.Name()] = d
	r.c = New(Config{Store: r.st, Scraper: r.sc, Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return r.now }})
	return r
}

// round advances 10 s, during which web1 used load CPU-seconds per second.
func (r *rig) round(load float64) {
	r.t.Helper()
	r.now = r.now.Add(10 * time.Second)
	r.sc.mu.Lock()
	r.sc.cpu["web1"] += load * 10
	r.sc.mu.Unlock()
	if err := r.c.Round(context.Background()); err != nil {
		r.t.Fatalf("round: %v", err)
	}
}

func (r *rig) state() alarm.State {
	r.st.mu.Lock()
	defer r.st.mu.Unlock()
	if in := r.st.insts["web-cpu/web1"]; in != nil {
		return in.State
	}
	return alarm.StateOK
}

func (r *rig) hook() Notification {
	r.t.Helper()
	select {
	case n := <-r.hooks:
		return n
	case <-time.After(5 * time.Second):
		r.t.Fatal("no webhook call")
	}
	return Notification{}
}

// TestAlarmFiresActsAndResolves: a VM over its CPU threshold for the
// alarm's `for` fires it once: the webhook gets the documented body and
// the VM is asked to move; when the load stops the alarm resolves and the
// webhook hears that too.
func TestAlarmFiresActsAndResolves(t *testing.T) {
	r := newRig(t)
	var told []string
	r.c.cfg.OnFire = func(name string) { told = append(told, name) }
	r.round(0.1) // first scrape: no rate yet
	r.round(0.95)
	if r.state() != alarm.StatePending {
		t.Fatalf("state %s after one round over, want pending", r.state())
	}
	r.round(0.95)
	r.round(0.95)
	if r.state() != alarm.StatePending {
		t.Fatalf("state %s before 30 s over, want pending", r.state())
	}
	r.round(0.95)
	if r.state() != alarm.StateFiring {
		t.Fatalf("state %s after 30 s over, want firing", r.state())
	}
	n := r.hook()
	if n.Alarm != "web-cpu" || n.State != "firing" || n.Target != "web1" || n.Kind != "vm" || n.Host != "h1" ||
		n.Severity != "critical" || n.Metric != "vm.cpu" || n.Value < 0.9 || n.FiredAt.IsZero() {
		t.Fatalf("firing notification %+v", n)
	}
	r.st.mu.Lock()
	moves := append([]string(nil), r.st.moves...)
	r.st.mu.Unlock()
	if len(moves) != 1 || moves[0] != "web1:alarm web-cpu" {
		t.Fatalf("migration requests %v, want one for web1", moves)
	}
	if len(told) != 1 || told[0] != "web-cpu" {
		t.Fatalf("OnFire told %v, want web-cpu once (it wakes the load balancer)", told)
	}
	// Still hot: no second round of actions.
	r.round(0.95)
	if len(r.st.moves) != 1 || len(r.hooks) != 0 {
		t.Fatalf("acted again while still firing: moves %v", r.st.moves)
	}
	// Back under the hysteresis band for clearFor: resolved.
	r.round(0.1)
	r.round(0.1)
	r.round(0.1)
	if r.state() != alarm.StateResolved {
		t.Fatalf("state %s after 20 s clear, want resolved", r.state())
	}
	if n := r.hook(); n.State != "resolved" || n.ResolvedAt.IsZero() {
		t.Fatalf("resolved notification %+v", n)
	}
	var fired, resolved int
	for _, ev := range r.st.Events() {
		switch ev.Type {
		case "alarm.firing":
			fired++
		case "alarm.resolved":
			resolved++
		}
	}
	if fired != 1 || resolved != 1 {
		t.Fatalf("%d firing and %d resolved events, want 1 and 1", fired, resolved)
	}
	if len(told) != 1 {
		t.Fatalf("OnFire told %v, want one firing", told)
	}
}

// TestMigrateAwayNeverMovesAVMMoreThanTheLimit: an alarm that keeps
// firing (a VM hot wherever it goes) moves it at most MaxMovesPerHour
// times an hour, and says so.
func TestMigrateAwayNeverMovesAVMMoreThanTheLimit(t *testing.T) {
	r := newRig(t)
	r.round(0.1)
	for i := 0; i < 60; i++ { // 10 minutes, flapping every 80 s
		load := 0.95
		if i%8 >= 5 {
			load = 0.1
		}
		r.round(load)
		for len(r.hooks) > 0 {
			<-r.hooks
		}
	}
	r.st.mu.Lock()
	moves := len(r.st.moves)
	r.st.mu.Unlock()
	if moves == 0 || moves > alarm.MaxMovesPerHour {
		t.Fatalf("%d moves in 10 minutes of flapping, want 1..%d", moves, alarm.MaxMovesPerHour)
	}
	damped := 0
	for _, ev := range r.st.Events() {
		if ev.Type == "alarm.firing" && strings.Contains(ev.Message, "damped") {
			damped++
		}
	}
	if damped == 0 {
		t.Fatal("no fire was damped while the alarm flapped")
	}
}

// TestDefaultsSeededOnce: the first round writes the shipped defaults; a
// default the operator deleted is not written again by a later leader.
func TestDefaultsSeededOnce(t *testing.T) {
	r := newRig(t)
	r.round(0)
	if _, ok := r.st.defs["host-cpu-high"]; !ok {
		t.Fatal("defaults not seeded")
	}
	delete(r.st.defs, "host-cpu-high")
	next := New(Config{Store: r.st, Scraper: r.sc, Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return r.now }})
	if err := next.Round(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.st.defs["host-cpu-high"]; ok {
		t.Fatal("a deleted default came back with a new leader")
	}
}

// TestRestartActionAsksTheHostOnce: a restart action writes one reset
// request for the VM when the alarm fires, none while it stays firing.
func TestRestartActionAsksTheHostOnce(t *testing.T) {
	r := newRig(t)
	d := r.st.defs["web-cpu"]
	d.Spec.Actions = []alarm.Action{{Type: alarm.ActionRestart}}
	r.round(0.1)
	for i := 0; i < 6; i++ {
		r.round(0.95)
	}
	snap, err := r.st.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if req := snap.Requests["web1"]; !strings.HasPrefix(req, store.RequestReset+":alarm web-cpu") {
		t.Fatalf("request %q, want a reset by the alarm", req)
	}
	r.st.SetRequest("web1", "") // the host served it
	r.round(0.95)
	if snap, _ := r.st.Snapshot(context.Background()); snap.Requests["web1"] != "" {
		t.Fatalf("a second reset while the alarm stayed firing: %q", snap.Requests["web1"])
	}
}
