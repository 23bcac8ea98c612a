package drs

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/alarm"
	"github.com/vigilha/vigil/internal/balance"
	"github.com/vigilha/vigil/internal/etcdtest"
	pmigration "github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/scheduler"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

// TestScaleSimulator is a SIMULATOR, labelled as such: it is not the real
// path. Real: etcd (embedded), the store, and the DRS controller, passes
// and all. Simulated: the agents (a scraper serves each VM's CPU time from
// a demand model; a migration DRS asks for is carried out at once, by
// writing the placement, status and finished plan an agent pair and the
// migration controller would write) and the clock (a pass a minute).
//
// Each size has 10 VMs per host (2 vCPU, 4 GiB, on hosts of 32 vCPU and
// 256 GiB), with skewed demand: the first quarter of the hosts carries VMs
// three times as busy. It prints, per pass, the pass time, the moves made
// and the imbalance. Sizes: VIGIL_DRS_SIM=64,256,1000 (the default test
// run does 64).
func TestScaleSimulator(t *testing.T) {
	sizes := []int{64}
	if env := os.Getenv("VIGIL_DRS_SIM"); env != "" {
		sizes = nil
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 2 {
				t.Fatalf("VIGIL_DRS_SIM=%q: want host counts such as 64,256,1000", env)
			}
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		t.Run(fmt.Sprintf("%d-hosts", n), func(t *testing.T) { simulate(t, n) })
	}
}

// simScraper is the simulated agents' metrics: CPU time accrued at each
// VM's demand on the simulated clock, on the host the VM is placed on.
type simScraper struct {
	mu     sync.Mutex
	now    time.Time
	hostOf map[string]string // vm -> host, from the last snapshot
	byHost map[string][]string
	demand map[string]float64
	cpu    map[string]float64
	last   time.Time
}

func (s *simScraper) advance(now time.Time, snap *store.Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.IsZero() {
		dt := now.Sub(s.last).Seconds()
		for vm, d := range s.demand {
			s.cpu[vm] += d * dt
		}
	}
	s.last, s.now = now, now
	s.hostOf, s.byHost = map[string]string{}, map[string][]string{}
	for name, v := range snap.VMs {
		s.hostOf[name] = v.Placement.Host
		s.byHost[v.Placement.Host] = append(s.byHost[v.Placement.Host], name)
	}
}

func (s *simScraper) Scrape(_ context.Context, host, _ string) (*alarm.Scrape, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := &alarm.Scrape{Host: host, At: s.now, Series: map[string][]alarm.Sample{}}
	for _, name := range s.byHost[host] {
		addVMSeries(sc, name, s.cpu[name], 2<<30)
	}
	return sc, nil
}

func simulate(t *testing.T, hosts int) {
	ctx := context.Background()
	cli := etcdtest.Start(t)
	st := store.New(cli)
	lease, err := cli.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	setup := time.Now()
	if err := st.PutDatastore(ctx, &store.Datastore{Name: "shared", Type: store.DatastoreShared}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutConfig(ctx, store.ClusterConfig{DRSAutomation: store.DRSFull}); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, uint64(hosts)))
	demand := map[string]float64{}
	names := make([]string, 0, hosts*10)
	for h := range hosts {
		host := fmt.Sprintf("sim%04d", h)
		for k := range 10 {
			d := 0.2 + 1.2*rng.Float64()
			if h < hosts/4 {
				d *= 3
			}
			name := fmt.Sprintf("%s-vm%d", host, k)
			demand[name] = d
			names = append(names, name)
		}
	}
	// Written by 16 writers: 10 000 VMs are 30 000 etcd transactions.
	work := make(chan int)
	var wg sync.WaitGroup
	var failed sync.Once
	for range 16 {
		wg.Go(func() {
			for h := range work {
				host := fmt.Sprintf("sim%04d", h)
				err := st.PutHost(ctx, &store.Host{Name: host, AgentURL: "http://" + host + ":7483", Datastores: []string{"shared"},
					Capacity: store.Resources{CPUs: 32, Memory: 256 << 30}})
				if err == nil {
					err = st.PutAlive(ctx, host, lease.ID, setup)
				}
				for k := 0; k < 10 && err == nil; k++ {
					name := fmt.Sprintf("%s-vm%d", host, k)
					rec := &store.VMRecord{VM: spec.VM{APIVersion: spec.APIVersion, Kind: "VM", Metadata: spec.Metadata{Name: name, UID: "u-" + name},
						Spec: spec.VMSpec{CPUs: 2, Memory: 4 << 30, Disks: []spec.Disk{{Name: "d", Datastore: "shared", Size: 1 << 30}}}},
						Power: store.PowerRunning, StartRequest: 1}
					if err = st.CreateVM(ctx, rec); err != nil {
						break
					}
					if err = st.SetPlacement(ctx, name, store.Placement{}, 0, store.Placement{Host: host, Epoch: 1}); err != nil {
						break
					}
					var v *store.VMState
					if v, err = st.VM(ctx, name); err != nil {
						break
					}
					err = st.PutStatus(ctx, name, v.PlacementRev, &store.VMStatus{State: store.StateRunning, Host: host, Epoch: 1, StartRequest: 1})
				}
				if err != nil {
					failed.Do(func() { t.Errorf("setup of %s: %v", host, err) })
				}
			}
		})
	}
	for h := range hosts {
		work <- h
	}
	close(work)
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("SIMULATOR %d hosts, %d VMs: written to etcd in %s", hosts, len(names), time.Since(setup).Round(time.Millisecond))

	now := time.Unix(1_800_000_000, 0)
	sc := &simScraper{demand: demand, cpu: map[string]float64{}}
	plans := &planLog{}
	c := New(Config{Store: st, Scraper: sc, Log: slog.New(plans),
		Interval: time.Minute, Window: time.Minute, Now: func() time.Time { return now }})
	var passTimes []time.Duration
	var planTimes []float64
	total := 0
	for pass := 1; pass <= 10; pass++ {
		snap, err := st.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sc.advance(now, snap)
		before := simImbalance(snap, demand)
		start := time.Now()
		if err := c.Pass(ctx); err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		passTimes = append(passTimes, took)
		planTimes = append(planTimes, plans.last())
		moved := carryOut(t, st, now)
		total += moved
		snap, err = st.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("SIMULATOR %d hosts pass %2d: %6.1f ms (planning %5.1f ms), %d moves, imbalance %.4f -> %.4f", hosts, pass, float64(took.Microseconds())/1000, planTimes[len(planTimes)-1], moved, before, simImbalance(snap, demand))
		now = now.Add(time.Minute)
	}
	slices.Sort(passTimes)
	slices.Sort(planTimes)
	t.Logf("SIMULATOR %d hosts: pass time median %.1f ms (max %.1f ms; the rest of a pass is etcd reads and writes and the scrapes), planning median %.1f ms, %d moves in 10 passes (at most %d a pass: DRS keeps %d in flight and the simulated agents finish each within the pass)",
		hosts, float64(passTimes[len(passTimes)/2].Microseconds())/1000, float64(passTimes[len(passTimes)-1].Microseconds())/1000, planTimes[len(planTimes)/2], total, MaxMovesPerPass, MaxMovesPerPass)
	if total == 0 {
		t.Errorf("no move in 10 passes with a quarter of the hosts three times as busy")
	}
}

// carryOut is the simulated agents and migration controller: every DRS
// migration request becomes a finished migration at once (placement on the
// target at the next epoch, status running there, plan completed).
func carryOut(t *testing.T, st *store.Store, now time.Time) int {
	ctx := context.Background()
	snap, err := st.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for name, m := range snap.Migrations {
		if !m.Pending() || m.Request.Reason != "drs" {
			continue
		}
		v := snap.VMs[name]
		next := store.Placement{Host: m.Request.To, Epoch: v.Placement.Epoch + 1}
		if err := st.SetPlacement(ctx, name, v.Placement, v.PlacementRev, next); err != nil {
			t.Fatal(err)
		}
		nv, err := st.VM(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.PutStatus(ctx, name, nv.PlacementRev, &store.VMStatus{State: store.StateRunning, Host: next.Host, Epoch: next.Epoch, StartRequest: 1}); err != nil {
			t.Fatal(err)
		}
		plan := &store.MigrationPlan{ID: m.Request.ID, Source: v.Placement.Host, Target: next.Host, Epoch: v.Placement.Epoch,
			Phase: pmigration.Completed, StartedAt: now, FinishedAt: now}
		if err := st.PutMigrationPlan(ctx, name, m.PlanRev, plan); err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

// simImbalance is the balancer's metric over the cluster as placed, with
// the demand model's true demand.
func simImbalance(snap *store.Snapshot, demand map[string]float64) float64 {
	var hs []balance.Host
	for _, h := range scheduler.Hosts(snap, "") {
		hs = append(hs, balance.Host{Name: h.Name, CPUs: float64(h.Capacity.CPUs), Memory: float64(h.Capacity.Memory), Sched: h})
	}
	var vms []balance.VM
	for name, v := range snap.VMs {
		vms = append(vms, balance.VM{Name: name, Host: v.Placement.Host, CPU: demand[name], Memory: 2 << 30})
	}
	return balance.Imbalance(hs, vms)
}

// planLog keeps the planning time of the controller's last pass (its
// "drs pass" debug record).
type planLog struct {
	mu sync.Mutex
	ms float64
}

func (l *planLog) Enabled(context.Context, slog.Level) bool { return true }
func (l *planLog) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *planLog) WithGroup(string) slog.Handler            { return l }
func (l *planLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "drs pass" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "plan_ms" {
			l.mu.Lock()
			l.ms = a.Value.Float64()
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *planLog) last() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ms
}
