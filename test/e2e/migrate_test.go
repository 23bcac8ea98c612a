package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// prober hits the guest's counter every interval and records what it saw:
// the counter must never go backwards or reset (same boot) across a live
// migration; the longest gap without an answer is the client-visible
// interruption.
type prober struct {
	mu       sync.Mutex
	last     guestclient.Counter
	lastOK   time.Time
	maxGap   time.Duration
	answers  int
	problems []string
	cancel   context.CancelFunc
	done     chan struct{}
}

func startProber(g *guestclient.Client, ip string, every time.Duration) *prober {
	ctx, cancel := context.WithCancel(context.Background())
	p := &prober{cancel: cancel, done: make(chan struct{}), lastOK: time.Now()}
	go func() {
		defer close(p.done)
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, time.Second)
			c, err := g.Counter(rctx, ip)
			rcancel()
			now := time.Now()
			p.mu.Lock()
			if err == nil {
				if gap := now.Sub(p.lastOK); gap > p.maxGap {
					p.maxGap = gap
				}
				if p.answers > 0 && (c.BootID != p.last.BootID || c.Counter <= p.last.Counter) {
					p.problems = append(p.problems, fmt.Sprintf("counter %d boot %.8s after %d boot %.8s", c.Counter, c.BootID, p.last.Counter, p.last.BootID))
				}
				p.last, p.lastOK = c, now
				p.answers++
			}
			p.mu.Unlock()
			time.Sleep(every)
		}
	}()
	return p
}

// stop returns the longest gap, the answers seen and any continuity problems.
func (p *prober) stop() (time.Duration, int, []string) {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.maxGap, p.answers, p.problems
}

func migrated(l *testenv.Lab, name, to string) v1.VM {
	return l.WaitVM(name, 2*time.Minute, "running on "+to, func(v v1.VM) bool { return v.State == "running" && v.Host == to })
}

func otherThan(l *testenv.Lab, hosts ...string) string {
	for _, h := range l.Hosts() {
		skip := false
		for _, x := range hosts {
			skip = skip || x == h
		}
		if !skip {
			return h
		}
	}
	return ""
}

func TestMigrate_SharedStorage_ClientNeverSeesAReset(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "mig1", nil)
	to := otherThan(l, v.Host)
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	p := startProber(g, v.IP, 10*time.Millisecond)
	sampler := check.StartSampler([]string{"mig1"}, 20*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	out, err := l.Vigil("vm", "migrate", "mig1", "--to", to)
	if err != nil {
		t.Fatalf("vm migrate: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(out, 2))
	migrated(l, "mig1", to)
	time.Sleep(2 * time.Second)
	gap, answers, problems := p.stop()
	acks := w.Stop()
	max := sampler.Stop()["mig1"]
	if len(problems) > 0 {
		t.Errorf("the in-guest counter went backwards or reset across the migration: %v", problems)
	}
	if answers < 50 {
		t.Errorf("only %d answers: the probe proved little", answers)
	}
	verifyLedger(t, g, v.IP, acks)
	if n := len(check.QEMUProcs("mig1")); n != 1 {
		t.Errorf("%d QEMUs of mig1 after the migration", n)
	}
	t.Logf("longest client gap %s over %d answers; at most %d QEMUs at once (source and paused destination overlap by design)", gap, answers, max)
	assertCleanCutover(t, l, "mig1")
	// A normal migration ends the source quietly: the operator's event log
	// must not show it as a host that fenced itself.
	if evs := l.Events(t0); hasEvent(evs, "host.self-fence", "mig1") {
		t.Errorf("a normal migration logged a self-fence:\n%s", testenv.Timeline(evs))
	}
}

// assertCleanCutover fails if the source ever resumed after a successful
// cut-over (both copies would have run).
func assertCleanCutover(t *testing.T, l *testenv.Lab, vm string) {
	t.Helper()
	for _, ev := range l.Events(time.Now().Add(-5 * time.Minute)) {
		if ev.VM == vm && (ev.Type == "migration.failed" || strings.Contains(ev.Message, "continues on the source")) {
			t.Errorf("a completed migration reported a failed cut-over (the source resumed): %s %s", ev.Type, ev.Message)
		}
	}
}

func TestMigrate_BusyGuest_Completes(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "busy1", nil)
	before, err := g.Counter(context.Background(), v.IP)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Dirty(context.Background(), v.IP, 64); err != nil {
		t.Fatal(err)
	}
	to := otherThan(l, v.Host)
	out, err := l.Vigil("vm", "migrate", "busy1", "--to", to)
	if err != nil {
		t.Fatalf("migrating a guest dirtying 64 MiB must complete: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(out, 2))
	migrated(l, "busy1", to)
	after, err := g.Counter(context.Background(), v.IP)
	if err != nil || after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest unhealthy after migration: %+v (before %+v), %v", after, before, err)
	}
	console, _ := l.Vigil("vm", "console", "busy1")
	for _, bad := range []string{"Kernel panic", "BUG:", "general protection", "Oops"} {
		if strings.Contains(console, bad) {
			t.Fatalf("guest console shows %q after migration:\n%s", bad, lastLines(console, 30))
		}
	}
	m, err := l.Client.Migration(context.Background(), "busy1")
	if err == nil {
		t.Logf("escalations: %v; downtime %d ms, total %d ms", m.Steps, m.Progress.DowntimeMS, m.Progress.TotalMS)
	}
}

func TestMigrate_SharedNothing_DiskComesAlong(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "sn1", func(vm *spec.VM) {
		vm.Spec.HA.Enabled = false
		vm.Spec.Disks[0].Datastore = "local"
	})
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(2 * time.Second)
	to := otherThan(l, v.Host)
	out, err := l.Vigil("vm", "migrate", "sn1", "--to", to)
	if err != nil {
		t.Fatalf("shared-nothing migration: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(out, 2))
	migrated(l, "sn1", to)
	assertCleanCutover(t, l, "sn1")
	time.Sleep(time.Second)
	acks := w.Stop()
	verifyLedger(t, g, v.IP, acks)
	dst := filepath.Join(l.Dir(), to, "datastores", "local", "sn1", "ledger.qcow2")
	if _, err := os.Stat(dst); err != nil {
		t.Errorf("the disk is not on the destination's local datastore: %v", err)
	}
	// The source deletes its copy once the destination runs.
	src := filepath.Join(l.Dir(), v.Host, "datastores", "local", "sn1", "ledger.qcow2")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(src); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the source still has the VM's local disk 15s after the move")
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMigrate_CancelAndBadTargets(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "can1", func(vm *spec.VM) {
		no := false
		vm.Spec.Migration.AllowPostcopy = &no
		vm.Spec.Migration.MaxBandwidth = 4 * spec.MiB // slow enough to cancel mid-way
	})
	before, _ := g.Counter(ctx, v.IP)
	to := otherThan(l, v.Host)
	if out, err := l.Vigil("vm", "migrate", "can1", "--to", to, "--detach"); err != nil {
		t.Fatalf("migrate --detach: %v\n%s", err, out)
	}
	l.WaitVM("can1", 30*time.Second, "migrating", func(x v1.VM) bool { return x.State == "migrating" })
	time.Sleep(2 * time.Second)
	if out, err := l.Vigil("vm", "migrate", "can1", "--cancel"); err != nil || !strings.Contains(out, "cancelled") {
		t.Fatalf("migrate --cancel: %v\n%s", err, out)
	}
	after := l.WaitVM("can1", 30*time.Second, "running", func(x v1.VM) bool { return x.State == "running" })
	if after.Host != v.Host {
		t.Errorf("a cancelled migration moved the VM to %s", after.Host)
	}
	time.Sleep(2 * time.Second)
	c, err := g.Counter(ctx, v.IP)
	if err != nil || c.BootID != before.BootID || c.Counter <= before.Counter {
		t.Errorf("the source stopped or rebooted after a cancel: %+v %v", c, err)
	}
	if n := len(check.QEMUProcs("can1")); n != 1 {
		t.Errorf("%d QEMUs of can1 after the cancel", n)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "migrate", "can1", "--to", "host9"}, `no host named "host9"`},
		{[]string{"vm", "migrate", "can1", "--to", v.Host}, "already runs on"},
		{[]string{"vm", "migrate", "nope", "--to", to}, "not found"},
	} {
		if out, err := l.Vigil(c.args...); err == nil || !strings.Contains(out, c.want) {
			t.Errorf("vigil %v: want an error containing %q, got %v: %s", c.args, c.want, err, out)
		}
	}
	if out, err := l.Vigil("host", "maintenance", "enter", to, "--detach"); err != nil {
		t.Fatalf("maintenance enter: %v\n%s", err, out)
	}
	if out, err := l.Vigil("vm", "migrate", "can1", "--to", to); err == nil || !strings.Contains(out, "maintenance") {
		t.Errorf("migrating to a host in maintenance: want a refusal naming maintenance, got %v: %s", err, out)
	}
	if out, err := l.Vigil("host", "maintenance", "exit", to); err != nil {
		t.Fatalf("maintenance exit: %v\n%s", err, out)
	}
	// Not enough memory: a 1792 MiB VM cannot join a 512 MiB one on `to`'s 2 GiB.
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatal(out)
	}
	if _, err := l.Client.CreateVM(ctx, testenv.HASpec(t, "fill1", func(vm *spec.VM) {
		vm.Spec.HA.Enabled = false
		vm.Spec.Memory = 512 * spec.MiB
		vm.Spec.Placement.Hosts.Must = []string{to}
	})); err != nil {
		t.Fatal(err)
	}
	big := l.CreateVM(testenv.HASpec(t, "big1", func(vm *spec.VM) {
		vm.Spec.Memory = 1792 * spec.MiB
		vm.Spec.HA.Enabled = false
		vm.Spec.Placement.Hosts.Should = []string{otherThan(l, to, v.Host)}
	}), "big1")
	if out, err := l.Vigil("vm", "migrate", "big1", "--to", to); err == nil || !strings.Contains(out, "memory") {
		t.Errorf("migrating %s into a host without room: want a refusal naming memory, got %v: %s", big.Name, err, out)
	}
}

func TestMaintenance_EvacuatesHostRespectingAntiAffinity(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4})
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatal(out)
	}
	// Three VMs on host2; the rule comes after, so that it constrains only
	// where the evacuation may put them: ev1 and ev2 must end up apart.
	on2 := func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{"host2"}; vm.Spec.Memory = 128 * spec.MiB }
	for _, n := range []string{"ev1", "ev2", "ev3"} {
		if v := l.CreateVM(testenv.HASpec(t, n, on2), n); v.Host != "host2" {
			t.Fatalf("setup: %s on %s, want host2", n, v.Host)
		}
	}
	if out, err := l.Vigil("rule", "create", "apart", "ev1", "ev2", "--kind", "anti-affinity", "--strength", "must"); err != nil {
		t.Fatal(out)
	}
	g := l.Guest("host2")
	boots := map[string]string{}
	for _, n := range []string{"ev1", "ev2", "ev3"} {
		v, _ := l.Client.GetVM(context.Background(), n)
		c := l.WaitAnswering(g, v.IP, bootLimit)
		boots[n] = c.BootID
	}
	out, err := l.Vigil("host", "maintenance", "enter", "host2", "--timeout", "5m")
	if err != nil {
		t.Fatalf("maintenance enter: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	hosts := map[string]string{}
	for _, n := range []string{"ev1", "ev2", "ev3"} {
		v := l.WaitVM(n, 10*time.Second, "off host2", movedFrom("host2"))
		hosts[n] = v.Host
		c, err := g.Counter(context.Background(), v.IP)
		if err != nil || c.BootID != boots[n] {
			t.Errorf("%s was not live-migrated (rebooted or not answering): %+v %v", n, c, err)
		}
	}
	if hosts["ev1"] == hosts["ev2"] {
		t.Errorf("evacuation put ev1 and ev2 together on %s, breaking the must anti-affinity rule", hosts["ev1"])
	}
	// The host takes no new VMs while in maintenance.
	if nv := l.CreateVM(testenv.HASpec(t, "new1", on2), "new1"); nv.Host == "host2" {
		t.Errorf("a new VM was placed on host2, which is in maintenance")
	}
	if out, err := l.Vigil("host", "maintenance", "exit", "host2"); err != nil {
		t.Fatalf("maintenance exit: %v\n%s", err, out)
	}
}

// TestMigrate_HostDeathAtEachPhase crashes the source or the destination
// at each phase of a migration. Every time exactly one copy of the VM ends
// up running (HA restarts it when the migrated state died with a host),
// and no acknowledged write is lost or written by two instances.
func TestMigrate_HostDeathAtEachPhase(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4, Faults: true, AgentArgs: []string{"--debug-cutover-delay=4s"}})
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatal(out)
	}
	no, yes := false, true
	cases := []struct {
		name, phase, kill string
		edit              func(*spec.VM)
		dirty             bool
		survivesOn        string // "source", "target", or "" (HA restarts it)
	}{
		{"precopy-kill-target", "migrating", "target", func(vm *spec.VM) {
			vm.Spec.Migration.AllowPostcopy = &no
			vm.Spec.Migration.MaxBandwidth = 8 * spec.MiB
		}, true, "source"},
		{"precopy-kill-source", "migrating", "source", func(vm *spec.VM) {
			vm.Spec.Migration.AllowPostcopy = &no
			vm.Spec.Migration.MaxBandwidth = 8 * spec.MiB
		}, true, ""},
		{"cutover-kill-source", "switchover", "source", nil, false, "target"},
		{"cutover-kill-target", "switchover", "target", nil, false, ""},
		{"postcopy-kill-target", "postcopy", "target", func(vm *spec.VM) {
			vm.Spec.Migration.AllowPostcopy = &yes
			vm.Spec.Migration.MaxBandwidth = 8 * spec.MiB
		}, true, ""},
		{"postcopy-kill-source", "postcopy", "source", func(vm *spec.VM) {
			vm.Spec.Migration.AllowPostcopy = &yes
			vm.Spec.Migration.MaxBandwidth = 8 * spec.MiB
		}, true, ""},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := l.For(t)
			name := fmt.Sprintf("ph%d", i)
			v, _ := haGuest(t, l, name, c.edit)
			source, target := v.Host, otherThan(l, v.Host)
			// Reach the guest from the third host: the other two may crash.
			g, err := l.Guests(otherThan(l, source, target), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := g.Counter(context.Background(), v.IP)
			if c.dirty {
				dirty64(t, l, v.IP, otherThan(l, source, target))
			}
			w := check.StartWriter(g, v.IP, 100*time.Millisecond)
			if _, err := l.Client.Migrate(context.Background(), name, target); err != nil {
				t.Fatal(err)
			}
			waitPhase(t, l, name, c.phase)
			victim := source
			if c.kill == "target" {
				victim = target
			}
			t.Logf("crashing the %s (%s) in phase %s", c.kill, victim, c.phase)
			crashed := time.Now()
			if err := l.Crash(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			// Generous, but far below TCP's retransmission timeout: a side
			// that waits for its socket to fail instead of the dead peer's
			// lease misses it (it took 154 s in post-copy before).
			after := l.WaitVM(name, time.Minute, "running on a live host", func(x v1.VM) bool { return x.State == "running" && x.Host != victim })
			placed := time.Since(crashed)
			l.WaitAnswering(g, v.IP, recoveryLimit)
			waitOneQEMU(t, name, 30*time.Second)
			t.Logf("crash -> running on %s after %s, answering after %s; timeline:\n%s", after.Host,
				placed.Round(time.Millisecond), time.Since(crashed).Round(time.Millisecond), testenv.Timeline(l.Events(crashed.Add(-5*time.Second))))
			time.Sleep(time.Second)
			verifyLedger(t, g, v.IP, w.Stop())
			c2, _ := g.Counter(context.Background(), v.IP)
			switch c.survivesOn {
			case "source", "target":
				want := map[string]string{"source": source, "target": target}[c.survivesOn]
				if after.Host != want || c2.BootID != before.BootID {
					t.Errorf("want the VM to continue (same boot) on the %s %s; it runs on %s, boot changed %v", c.survivesOn, want, after.Host, c2.BootID != before.BootID)
				}
			default:
				t.Logf("the migrated state died with %s; HA restarted the VM on %s (boot changed %v)", victim, after.Host, c2.BootID != before.BootID)
			}
			if err := l.Heal(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			waitHostAlive(t, l, victim, 60*time.Second)
			if _, err := l.Vigil("vm", "delete", name, "--wait", "60s"); err != nil {
				t.Logf("delete %s: %v", name, err)
			}
		})
	}
}

// TestMigrate_HostDeathDuringDiskMirror crashes the source or the
// destination of a shared-nothing migration while the disk is mirrored.
// Losing the destination leaves the VM running on the source; losing the
// source loses the only live copy (the disk is host-local): the VM runs
// nowhere, never twice, and comes back with its disk when the host returns.
func TestMigrate_HostDeathDuringDiskMirror(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4})
	for i, kill := range []string{"target", "source"} {
		t.Run("mirror-kill-"+kill, func(t *testing.T) {
			l := l.For(t)
			name := fmt.Sprintf("mir%d", i)
			no := false
			v, _ := haGuest(t, l, name, func(vm *spec.VM) {
				vm.Spec.HA.Enabled = false
				vm.Spec.Disks[0].Datastore = "local"
				vm.Spec.Migration.AllowPostcopy = &no
				vm.Spec.Migration.MaxBandwidth = spec.MiB // 64 MiB disk: a minute of mirroring
			})
			source, target := v.Host, otherThan(l, v.Host)
			g, err := l.Guests(otherThan(l, source, target), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			before, _ := g.Counter(context.Background(), v.IP)
			w := check.StartWriter(g, v.IP, 100*time.Millisecond)
			if _, err := l.Client.Migrate(context.Background(), name, target); err != nil {
				t.Fatal(err)
			}
			waitPhase(t, l, name, "mirroring")
			time.Sleep(2 * time.Second)
			victim := map[string]string{"target": target, "source": source}[kill]
			t.Logf("crashing the %s (%s) during the disk mirror", kill, victim)
			if err := l.Crash(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			if kill == "target" {
				after := l.WaitVM(name, time.Minute, "running on the source", func(x v1.VM) bool { return x.State == "running" && x.Host == source })
				l.WaitAnswering(g, v.IP, recoveryLimit)
				time.Sleep(3 * time.Second)
				c, err := g.Counter(context.Background(), v.IP)
				if err != nil || c.BootID != before.BootID {
					t.Errorf("the source copy did not carry on: %+v %v (host %s)", c, err, after.Host)
				}
				verifyLedger(t, g, v.IP, w.Stop())
				waitOneQEMU(t, name, 30*time.Second)
			} else {
				// The only copy died with its host: nothing may run it elsewhere.
				time.Sleep(10 * time.Second)
				acks := w.Stop()
				if n := len(check.QEMUProcs(name)); n != 0 {
					t.Errorf("%d QEMUs of %s while its local disk's host is down (the paused destination must be gone)", n, name)
				}
				if err := l.Heal(context.Background(), victim); err != nil {
					t.Fatal(err)
				}
				waitHostAlive(t, l, victim, 60*time.Second)
				if out, err := l.Vigil("vm", "start", name, "--wait", "60s"); err != nil {
					t.Fatalf("start after the host came back: %v\n%s", err, out)
				}
				l.WaitAnswering(g, v.IP, recoveryLimit)
				verifyLedger(t, g, v.IP, acks)
				waitOneQEMU(t, name, 30*time.Second)
				return
			}
			if err := l.Heal(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			waitHostAlive(t, l, victim, 60*time.Second)
		})
	}
}

// dirty64 has the guest at ip dirty 64 MiB of its memory, asked from
// host, so that its migration takes long enough to be caught mid-way.
func dirty64(t *testing.T, l *testenv.Lab, ip, host string) {
	t.Helper()
	// The guest touches 64 MiB before it answers: slow under TCG.
	slow, err := l.Guests(host, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := slow.Dirty(context.Background(), ip, 64); err != nil {
		t.Fatal(err)
	}
}

// waitPhase waits until a VM's migration reaches phase: a plan phase
// (migrating, switchover) or a source step (mirroring, postcopy).
func waitPhase(t *testing.T, l *testenv.Lab, vm, phase string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		m, err := l.Client.Migration(context.Background(), vm)
		if err == nil {
			if m.Phase == phase || m.Step == phase {
				return
			}
			if m.Phase == "completed" || m.Phase == "failed" || m.Phase == "cancelled" {
				t.Fatalf("migration ended (%s: %s) before reaching %s", m.Phase, m.Error, phase)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("migration of %s did not reach %s in 2m", vm, phase)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
