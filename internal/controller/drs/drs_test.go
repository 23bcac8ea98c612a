package drs

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	pmigration "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
	"github.com/vigilha/vigil/internal/store/memstore"
)

// drsStore adds the DRS records to the in-memory store.
type drsStore struct {
	*memstore.Store
	mu      sync.Mutex
	recs    []store.DRSMove
	history []store.DRSMove
}

func (s *drsStore) PutDRSRecommendations(_ context.Context, recs []store.DRSMove) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = recs
	return nil
}

func (s *drsStore) AddDRSHistory(_ context.Context, m store.DRSMove) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.history = append(s.history, m)
	return nil
}

func (s *drsStore) DRSHistory(_ context.Context, since time.Time) ([]store.DRSMove, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.DRSMove
	for _, m := range s.history {
		if !m.At.Before(since) {
			out = append(out, m)
		}
	}
	return out, nil
}

// fakeScraper serves each host's VMs with the CPU time their demand
// (cores) accrues on the test's clock.
type fakeScraper struct {
	st     *memstore.Store
	now    *time.Time
	demand map[string]float64
}

func (f fakeScraper) Scrape(_ context.Context, host, _ string) (*alarm.Scrape, error) {
	snap, err := f.st.Snapshot(context.Background())
	if err != nil {
		return nil, err
	}
	s := &alarm.Scrape{Host: host, At: *f.now, Series: map[string][]alarm.Sample{}}
	for name, v := range snap.VMs {
		if v.Placement.Host != host {
			continue
		}
		addVMSeries(s, name, float64(f.now.Unix()-1_800_000_000)*f.demand[name], 200<<20)
	}
	return s, nil
}

// fixture: three hosts of 4 vCPUs; busy1..3 (1 core of demand each) and
// idle1 all on h1.
func fixture(t *testing.T, auto string) (*drsStore, *Controller, *time.Time) {
	now := time.Unix(1_800_000_100, 0)
	ms := memstore.New()
	ms.Now = func() time.Time { return now }
	for i, h := range []string{"h1", "h2", "h3"} {
		ms.AddHost(store.Host{Name: h, AgentURL: fmt.Sprintf("http://10.0.0.%d:7483", i+1), Capacity: store.Resources{CPUs: 4, Memory: 8 << 30},
			Datastores: []string{"shared"}}, true)
	}
	ms.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared})
	ms.SetConfig(store.ClusterConfig{DRSAutomation: auto})
	demand := map[string]float64{"busy1": 1, "busy2": 1, "busy3": 1, "idle1": 0.02}
	for _, name := range []string{"busy1", "busy2", "busy3", "idle1"} {
		ms.AddVM(store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{CPUs: 1, Memory: 512 << 20,
			Disks: []spec.Disk{{Name: "d", Datastore: "shared", Size: 64 << 20}}}}, Power: store.PowerRunning})
		ms.Place(name, store.Placement{Host: "h1", Epoch: 1})
		ms.SetStatus(name, store.VMStatus{State: store.StateRunning, Host: "h1", Epoch: 1})
	}
	s := &drsStore{Store: ms}
	c := New(Config{Store: s, Scraper: fakeScraper{st: ms, now: &now, demand: demand}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		// A short window: a VM can move once measured for two windows (10 s).
		Interval: 10 * time.Second, Window: 5 * time.Second, Now: func() time.Time { return now }})
	return s, c, &now
}

// passes runs n passes 10 s apart.
func passes(t *testing.T, c *Controller, now *time.Time, n int) {
	t.Helper()
	for range n {
		if err := c.Pass(context.Background()); err != nil {
			t.Fatal(err)
		}
		*now = now.Add(10 * time.Second)
	}
}

// In full automation, three busy VMs on one host are spread by two live
// migrations, each recorded in the history with why; nothing moves before
// the demand has been measured twice.
func TestFullAutomationSpreadsTheLoad(t *testing.T) {
	s, c, now := fixture(t, store.DRSFull)
	passes(t, c, now, 2)
	if n := len(s.history); n != 0 {
		t.Fatalf("%d moves before the demand was measured twice", n)
	}
	passes(t, c, now, 1)
	if len(s.history) != 2 {
		t.Fatalf("history %+v, want two moves", s.history)
	}
	targets := map[string]bool{}
	for _, m := range s.history {
		if m.By != "drs" || m.From != "h1" || m.Why == "" || m.Gain <= m.Cost {
			t.Fatalf("move %+v", m)
		}
		targets[m.To] = true
		snap, _ := s.Snapshot(context.Background())
		mig := snap.Migrations[m.VM]
		if mig == nil || mig.Request == nil || mig.Request.To != m.To || mig.Request.Reason != "drs" {
			t.Fatalf("no migration request for %s to %s: %+v", m.VM, m.To, mig)
		}
	}
	if !targets["h2"] || !targets["h3"] {
		t.Fatalf("moves to %v, want h2 and h3", targets)
	}
	// The requests are still in flight (nothing runs them here): no more.
	passes(t, c, now, 3)
	if len(s.history) != 2 {
		t.Fatalf("DRS moved more while its own migrations were in flight: %+v", s.history)
	}
}

// In manual automation nothing moves: the same two moves are recommended,
// each announced once.
func TestManualAutomationRecommends(t *testing.T) {
	s, c, now := fixture(t, "")
	passes(t, c, now, 5)
	if len(s.history) != 0 {
		t.Fatalf("manual automation moved: %+v", s.history)
	}
	if len(s.recs) != 2 {
		t.Fatalf("recommendations %+v, want 2", s.recs)
	}
	snap, _ := s.Snapshot(context.Background())
	for _, r := range s.recs {
		if snap.Migrations[r.VM] != nil {
			t.Fatalf("manual automation requested a migration of %s", r.VM)
		}
	}
	n := 0
	for _, ev := range s.Events() {
		if ev.Type == "drs.recommendation" {
			n++
		}
	}
	if n != 2 {
		t.Fatalf("%d recommendation events over 5 passes, want 2 (each announced once)", n)
	}
}

// A VM DRS moved is in its cool-down, and a move back along the same pair
// of hosts is refused: with the history saying busy1 went h2 -> h1 a
// minute ago, busy1 stays and no VM goes from h1 to h2.
func TestCooldownAndNoTradingPlaces(t *testing.T) {
	s, c, now := fixture(t, store.DRSFull)
	s.history = []store.DRSMove{{VM: "busy1", From: "h2", To: "h1", At: now.Add(-time.Minute), By: "drs"}}
	passes(t, c, now, 3)
	for _, m := range s.history[1:] {
		if m.VM == "busy1" {
			t.Fatalf("busy1 moved again in its cool-down: %+v", m)
		}
		if m.From == "h1" && m.To == "h2" {
			t.Fatalf("a VM went back along h1 -> h2 a minute after one came h2 -> h1: %+v", m)
		}
	}
	if len(s.history) < 2 {
		t.Fatalf("no move at all: %+v", s.history)
	}
}

// A VM's spec overrides the cluster's automation: one disabled is never
// moved, one at manual is only recommended, while the cluster is at full.
func TestPerVMAutomation(t *testing.T) {
	s, c, now := fixture(t, store.DRSFull)
	s.SetRecord("busy1", func(r *store.VMRecord) { r.VM.Spec.DRS.Automation = "disabled" })
	s.SetRecord("busy2", func(r *store.VMRecord) { r.VM.Spec.DRS.Automation = "manual" })
	passes(t, c, now, 3)
	for _, m := range s.history {
		if m.VM == "busy1" || m.VM == "busy2" {
			t.Fatalf("moved %s against its spec: %+v", m.VM, m)
		}
	}
	if len(s.history) != 1 || s.history[0].VM != "busy3" {
		t.Fatalf("history %+v, want busy3 moved", s.history)
	}
	found := false
	for _, r := range s.recs {
		if r.VM == "busy1" {
			t.Fatalf("busy1 (DRS disabled) recommended: %+v", r)
		}
		found = found || r.VM == "busy2"
	}
	if !found {
		t.Fatalf("busy2 (manual) not recommended: %+v", s.recs)
	}
}

// A move's cost comes from the migration history: a VM that migrated
// before is expected to take what it took; others, their memory at the
// median throughput of the completed migrations, with their median
// downtime. Failed migrations teach nothing.
func TestCostsFromHistory(t *testing.T) {
	vm := func(name string, mem spec.Size) *store.VMState {
		return &store.VMState{Record: &store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name}, Spec: spec.VMSpec{Memory: mem,
			Disks: []spec.Disk{{Name: "d", Datastore: "shared", Size: 64 << 20}}}}}}
	}
	done := func(bytes, totalMS, downMS int64, phase pmigration.PlanPhase) *store.MigrationState {
		return &store.MigrationState{Plan: &store.MigrationPlan{Phase: phase},
			Source: &store.MigrationSource{Progress: store.MigrationProgress{Transferred: bytes, TotalMS: totalMS, DowntimeMS: downMS}}}
	}
	snap := &store.Snapshot{
		VMs:        map[string]*store.VMState{"a": vm("a", 1<<30), "b": vm("b", 512<<20)},
		Datastores: map[string]*store.Datastore{"shared": {Name: "shared", Type: store.DatastoreShared}},
		Migrations: map[string]*store.MigrationState{
			"a": done(1<<30, 2000, 30, pmigration.Completed),
			"x": done(1<<30, 100, 900, pmigration.Failed),
		},
	}
	c := learnCosts(snap)
	if s, d := c.of(snap, snap.VMs["a"]); s != 2 || d != 0.03 {
		t.Fatalf("a (migrated before in 2 s, 30 ms down): expected %v s, %v s down", s, d)
	}
	if s, d := c.of(snap, snap.VMs["b"]); s != 1 || d != 0.03 {
		t.Fatalf("b (512 MiB at the median 512 MiB/s): expected %v s, %v s down", s, d)
	}
	empty := learnCosts(&store.Snapshot{})
	if s, _ := empty.of(snap, snap.VMs["b"]); s != 0.5 {
		t.Fatalf("no history: b expected %v s, want 0.5 (512 MiB at the assumed 1 GiB/s)", s)
	}
}

// noisyScraper serves CPU time accrued at a demand that changes over time
// (cores, by VM name, at the test's clock).
type noisyScraper struct {
	st     *memstore.Store
	now    *time.Time
	demand func(vm, host string, at time.Time) float64
	mu     sync.Mutex
	cpu    map[string]float64
	last   map[string]time.Time
}

func (f *noisyScraper) Scrape(_ context.Context, host, _ string) (*alarm.Scrape, error) {
	snap, err := f.st.Snapshot(context.Background())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	s := &alarm.Scrape{Host: host, At: *f.now, Series: map[string][]alarm.Sample{}}
	for name, v := range snap.VMs {
		if v.Placement.Host != host {
			continue
		}
		if last, ok := f.last[name]; ok {
			f.cpu[name] += f.now.Sub(last).Seconds() * f.demand(name, host, *f.now)
		}
		f.last[name] = *f.now
		addVMSeries(s, name, f.cpu[name], 200<<20)
	}
	return s, nil
}

// Noise moves nothing: six VMs, two per host, whose hosts take turns at
// being busy (both VMs burn for 30 s, host after host). The recent view
// of demand sees one hot host at every moment; the long view sees them
// even, so full automation makes no move in 10 minutes. The same VMs
// gathered with steady load still get spread (both views agree).
func TestNoiseMovesNothing(t *testing.T) {
	for _, noisy := range []bool{true, false} {
		now := time.Unix(1_800_000_100, 0)
		ms := memstore.New()
		ms.Now = func() time.Time { return now }
		hosts := []string{"h1", "h2", "h3"}
		for i, h := range hosts {
			ms.AddHost(store.Host{Name: h, AgentURL: fmt.Sprintf("http://10.0.0.%d:7483", i+1), Capacity: store.Resources{CPUs: 4, Memory: 8 << 30},
				Datastores: []string{"shared"}}, true)
		}
		ms.AddDatastore(store.Datastore{Name: "shared", Type: store.DatastoreShared})
		ms.SetConfig(store.ClusterConfig{DRSAutomation: store.DRSFull})
		for i := range 6 {
			name, h := fmt.Sprintf("vm%d", i+1), hosts[i/2]
			if !noisy {
				h = "h1" // steady skew: all on one host
			}
			ms.AddVM(store.VMRecord{VM: spec.VM{Metadata: spec.Metadata{Name: name, UID: "u-" + name}, Spec: spec.VMSpec{CPUs: 1, Memory: 512 << 20,
				Disks: []spec.Disk{{Name: "d", Datastore: "shared", Size: 64 << 20}}}}, Power: store.PowerRunning})
			ms.Place(name, store.Placement{Host: h, Epoch: 1})
			ms.SetStatus(name, store.VMStatus{State: store.StateRunning, Host: h, Epoch: 1})
		}
		sc := &noisyScraper{st: ms, now: &now, cpu: map[string]float64{}, last: map[string]time.Time{},
			demand: func(vm, host string, at time.Time) float64 {
				if !noisy {
					return 0.6
				}
				slot := int(at.Sub(time.Unix(1_800_000_100, 0)) / (30 * time.Second))
				if hosts[slot%3] == host {
					return 1
				}
				return 0.02
			}}
		s := &drsStore{Store: ms}
		c := New(Config{Store: s, Scraper: sc, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			Interval: 10 * time.Second, Window: 30 * time.Second, Now: func() time.Time { return now }})
		passes(t, c, &now, 60)
		s.mu.Lock()
		moved := len(s.history)
		s.mu.Unlock()
		switch {
		case noisy && moved != 0:
			t.Errorf("noise: %d moves in 10 minutes, want none: %+v", moved, s.history)
		case !noisy && moved == 0:
			t.Errorf("steady skew (six busy VMs on h1): no move in 10 minutes")
		}
	}
}

// addVMSeries adds what an agent's /metrics says of one running VM (its
// QEMU started at 1_800_000_000): CPU time and resident memory.
func addVMSeries(s *alarm.Scrape, vm string, cpuSeconds, rss float64) {
	l := map[string]string{"vm": vm, "host": s.Host}
	s.Series["vigil_vm_running"] = append(s.Series["vigil_vm_running"], alarm.Sample{Labels: l, Value: 1})
	s.Series["vigil_vm_start_timestamp_seconds"] = append(s.Series["vigil_vm_start_timestamp_seconds"], alarm.Sample{Labels: l, Value: 1_800_000_000})
	s.Series["vigil_vm_cpu_seconds_total"] = append(s.Series["vigil_vm_cpu_seconds_total"], alarm.Sample{Labels: l, Value: cpuSeconds})
	s.Series["vigil_vm_memory_rss_bytes"] = append(s.Series["vigil_vm_memory_rss_bytes"], alarm.Sample{Labels: l, Value: rss})
}
