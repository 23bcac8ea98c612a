package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestDRS_SpreadsBusyVMs: three guests burning their vCPU, gathered on one
// host by live migration (lab hosts declare 4 vCPUs here, so that three
// 1-vCPU VMs and a fourth fit on one). In manual automation DRS recommends moves and nothing moves; an
// operator applies one; in full automation DRS spreads the rest, every move
// in its history with why, no VM moved more than twice, and a VM that must
// run on host1 never leaves it. Every guest answers with the same boot
// throughout (live migrations, no restart).
func TestDRS_SpreadsBusyVMs(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4})
	ctx := context.Background()
	cfg := noFailoverCapacity(t, l)
	names := []string{"busy1", "busy2", "busy3", "pinned"}
	for _, n := range names {
		l.CreateVM(testenv.HASpec(t, n, func(vm *spec.VM) {
			if n == "pinned" {
				vm.Spec.Placement.Hosts = spec.HostRule{Must: []string{"host1"}}
			}
		}), n)
	}
	g, err := l.Guests("host3", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Gathered on host1 by hand once booted, as an operator would (no rule
	// keeps them). Not during their firmware: DRS prices a move by the
	// VM's own last migration, and one made in the first second under TCG
	// (434 ms of downtime in one CI run) makes the second move cost about
	// what it gains, so that DRS rightly leaves the VM where it is.
	for _, n := range names {
		v := l.WaitVM(n, 2*time.Minute, "running", func(v v1.VM) bool { return v.State == "running" })
		l.WaitAnswering(g, v.IP, bootLimit)
		if v.Host != "host1" {
			if _, err := l.Client.Migrate(ctx, n, "host1"); err != nil {
				t.Fatal(err)
			}
		}
	}
	boots := map[string]string{}
	for _, n := range names {
		v := l.WaitVM(n, 2*time.Minute, "running on host1", func(v v1.VM) bool { return v.State == "running" && v.Host == "host1" })
		l.WaitAnswering(g, v.IP, bootLimit)
		c, err := g.Counter(ctx, v.IP)
		if err != nil {
			t.Fatal(err)
		}
		boots[n] = c.BootID
		if n != "pinned" {
			if err := g.Burn(ctx, v.IP, 15*time.Minute); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Manual: recommendations appear, nothing moves by itself.
	deadline := time.Now().Add(2 * time.Minute)
	var recs []v1.DRSMove
	for len(recs) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no DRS recommendation in 2 minutes with three busy VMs on one host")
		}
		time.Sleep(2 * time.Second)
		if recs, err = l.Client.DRSRecommendations(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("recommended: %s", recs[0].Why)
	time.Sleep(25 * time.Second) // two more passes
	for _, n := range names {
		if v := vmNamed(t, l, n); v.Host != "host1" {
			t.Fatalf("manual automation: %s moved to %s by itself", n, v.Host)
		}
	}
	// Apply what is recommended now (the list is recomputed every pass;
	// an operator lists, then applies, and lists again if it changed).
	var applied v1.DRSMove
	for attempt := 0; ; attempt++ {
		if recs, err = l.Client.DRSRecommendations(ctx); err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			t.Fatal("the recommendations went away with the load still on host1")
		}
		if applied, err = l.Client.DRSApply(ctx, recs[0].ID); err == nil {
			break
		}
		if attempt == 5 || !strings.Contains(err.Error(), "no DRS recommendation") {
			t.Fatal(err)
		}
	}
	if applied.VM == "pinned" {
		t.Fatal("DRS recommended moving the VM that must run on host1")
	}
	l.WaitVM(applied.VM, 2*time.Minute, "moved to "+applied.To, func(v v1.VM) bool { return v.State == "running" && v.Host == applied.To })
	// Full: DRS spreads what is left.
	cfg.DRSAutomation = "full"
	if err := l.Client.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	moves := map[string]int{}
	last := map[string]string{}
	spread := func() bool {
		hosts := map[string]bool{}
		for _, n := range names[:3] {
			v := vmNamed(t, l, n)
			if last[n] != "" && v.Host != "" && v.Host != last[n] {
				moves[n]++
			}
			if v.Host != "" {
				last[n] = v.Host
			}
			if v.State == "running" {
				hosts[v.Host] = true
			}
		}
		if v := vmNamed(t, l, "pinned"); v.Host != "host1" {
			t.Fatalf("pinned left host1 (must rule): on %s", v.Host)
		}
		return len(hosts) == 3
	}
	for !spread() {
		if time.Since(start) > 5*time.Minute {
			t.Fatalf("the busy VMs are not one per host 5 minutes after full automation: %v", last)
		}
		time.Sleep(time.Second)
	}
	t.Logf("balanced %s after full automation was set: %v", time.Since(start).Round(time.Second), last)
	// It stays balanced: no move for 30 s more.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(time.Second) {
		spread()
	}
	hist, err := l.Client.DRSHistory(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	perVM := map[string]int{}
	for _, m := range hist {
		perVM[m.VM]++
		if m.Why == "" || m.Gain <= 0 || m.By == "" {
			t.Errorf("history entry without its explanation: %+v", m)
		}
		t.Logf("DRS history: %s %s -> %s by %s: %s", m.VM, m.From, m.To, m.By, m.Why)
	}
	for _, n := range names[:3] {
		if moves[n] > perVM[n] {
			t.Errorf("%s moved %d times, %d in the DRS history: something else moved it", n, moves[n], perVM[n])
		}
		if perVM[n] > 2 {
			t.Errorf("%s moved %d times by DRS (anti-churn bar 2)", n, perVM[n])
		}
	}
	for _, n := range names {
		v := vmNamed(t, l, n)
		c, err := g.Counter(ctx, v.IP)
		if err != nil {
			t.Fatal(err)
		}
		if c.BootID != boots[n] {
			t.Errorf("%s rebooted (boot %s -> %s): DRS moves must be live migrations", n, boots[n], c.BootID)
		}
		_ = g.Burn(ctx, v.IP, 0)
	}
}

// TestDRS_NoisyLoadMakesNoMoves: a balanced cluster (two guests per host)
// whose load is noisy: each host's guests burn their vCPUs together for
// 30 s in turn, host after host, so that at every moment one host is busy
// and two are idle. Moving a guest would only move the noise, and full
// automation makes no move at all over a full cycle (every host busy once,
// 90 s; VIGIL_SOAK runs more cycles, for that long).
func TestDRS_NoisyLoadMakesNoMoves(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4})
	ctx := context.Background()
	cfg := noFailoverCapacity(t, l)
	names := []string{"noisy1", "noisy2", "noisy3", "noisy4", "noisy5", "noisy6"}
	for _, n := range names {
		l.CreateVM(testenv.HASpec(t, n, nil), n)
	}
	g, err := l.Guests("host3", 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	byHost := map[string][]v1.VM{}
	for _, n := range names {
		v := l.WaitVM(n, 2*time.Minute, "running", func(v v1.VM) bool { return v.State == "running" })
		l.WaitAnswering(g, v.IP, bootLimit)
		byHost[v.Host] = append(byHost[v.Host], v)
	}
	hosts := l.Hosts()
	for _, h := range hosts {
		if len(byHost[h]) != 2 {
			t.Fatalf("test setup: placement put %d guests on %s, want 2 per host: %v", len(byHost[h]), h, byHost)
		}
	}
	cfg.DRSAutomation = "full"
	if err := l.Client.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	const slot = 30 * time.Second
	cycles := 1
	if d := soakDuration(t, 0); d > 0 {
		cycles = max(1, int(d/(3*slot)))
	}
	start := time.Now()
	for cycle := 0; cycle < cycles; cycle++ {
		for _, h := range hosts {
			for _, v := range byHost[h] {
				if err := g.Burn(ctx, v.IP, slot); err != nil {
					t.Fatal(err)
				}
			}
			for end := time.Now().Add(slot); time.Now().Before(end); time.Sleep(2 * time.Second) {
				for _, hv := range byHost {
					for _, v := range hv {
						if now := vmNamed(t, l, v.Name); now.Host != v.Host {
							t.Fatalf("%s moved %s -> %s %s into the noise (cycle %d, %s busy)", v.Name, v.Host, now.Host, time.Since(start).Round(time.Second), cycle+1, h)
						}
					}
				}
			}
		}
	}
	hist, err := l.Client.DRSHistory(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range hist {
		t.Errorf("DRS moved %s %s -> %s: %s", m.VM, m.From, m.To, m.Why)
	}
	recs, err := l.Client.DRSRecommendations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %s of noise: %d DRS moves, %d pending recommendations", time.Since(start).Round(time.Second), len(hist), len(recs))
}

// noFailoverCapacity turns admission control's failover reserve off (the
// DRS tests pack VMs onto hosts) and returns the cluster configuration.
func noFailoverCapacity(t *testing.T, l *testenv.Lab) v1.ClusterConfig {
	t.Helper()
	ctx := context.Background()
	cfg, err := l.Client.Config(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg.HostFailuresToTolerate = 0
	if err := l.Client.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

func vmNamed(t *testing.T, l *testenv.Lab, name string) v1.VM {
	t.Helper()
	v, err := l.Client.GetVM(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return *v
}
