package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// replicaOf returns the VM's first replicated disk's replica, or nil.
func replicaOf(v v1.VM) *v1.Replica {
	for _, d := range v.Disks {
		if d.Replica != nil {
			return d.Replica
		}
	}
	return nil
}

func replicaState(state, replication string) func(v1.VM) bool {
	return func(v v1.VM) bool {
		r := replicaOf(v)
		return r != nil && r.Host != "" && r.State == state && r.Replication == replication
	}
}

// repGuest creates a guest from examples/replicated-guest.yaml, waits until
// its replica is UpToDate and it answers, and returns it with a guest
// client on the one host that holds neither copy.
func repGuest(t *testing.T, l *testenv.Lab, name string) (v1.VM, *guestclient.Client) {
	t.Helper()
	l.CreateVM(testenv.ExampleSpec(t, "replicated-guest.yaml", name, nil), name)
	v := l.WaitVM(name, 3*time.Minute, "running with its replica UpToDate", replicaState("UpToDate", "Established"))
	r := replicaOf(v)
	if r.Host == v.Host {
		t.Fatalf("replica on the VM's own host %s", v.Host)
	}
	var g *guestclient.Client
	for _, h := range l.Hosts() {
		if h != v.Host && h != r.Host {
			var err error
			if g, err = l.Guests(h, 3*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	l.WaitAnswering(g, v.IP, bootLimit)
	t.Logf("%s on %s, replica on %s (%s/%s)", name, v.Host, r.Host, r.State, r.Replication)
	return v, g
}

// wantIncremental checks that the replica's last sync copied only about
// what the guest wrote while the replica was away: incremental, and at
// most the ledger records acknowledged since from (4 KiB each) plus, per
// copy round, one 64 KiB bitmap cluster more (an append can re-dirty the
// cluster a round just copied) and two for the rounding at either end.
// A full sync would copy the whole 64 MiB disk.
func wantIncremental(t *testing.T, v v1.VM, acks []check.Ack, from time.Time) {
	t.Helper()
	r := replicaOf(v)
	ls := r.LastSync
	if ls == nil {
		t.Fatalf("no last sync recorded for the replica: %+v", r)
	}
	n := 0
	for _, a := range acks {
		if a.At.After(from) && !a.At.After(ls.At) {
			n++
		}
	}
	limit := int64(n)*4096 + int64(ls.Rounds+2)*(64<<10)
	t.Logf("resync: incremental %v, %d KiB copied in %d rounds (VM paused %d ms), %.2fs; %d appends acknowledged meanwhile (limit %d KiB)%s",
		ls.Incremental, ls.Bytes>>10, ls.Rounds, ls.PauseMillis, ls.Seconds, n, limit>>10, fallback(ls.Fallback))
	if !ls.Incremental {
		t.Fatalf("the resync after a short outage was full: %s", ls.Fallback)
	}
	if ls.Bytes <= 0 || ls.Bytes > limit {
		t.Fatalf("the incremental resync copied %d bytes, want between 1 and %d (what %d appends wrote, with the bitmap's rounding)", ls.Bytes, limit, n)
	}
}

func fallback(why string) string {
	if why == "" {
		return ""
	}
	return " (fallback: " + why + ")"
}

// maxGap is the longest time between two acknowledged appends after from.
func maxGap(acks []check.Ack, from time.Time) time.Duration {
	var gap time.Duration
	last := from
	for _, a := range acks {
		if a.At.Before(from) {
			continue
		}
		if d := a.At.Sub(last); d > gap {
			gap = d
		}
		last = a.At
	}
	return gap
}

// The replica's host crashes: the VM goes on (after recording the replica
// Outdated), the replica comes back and is resynced to UpToDate; the
// replication link is cut while both hosts reach etcd: only the primary
// goes on, and the copies converge after the heal; then the primary's host
// crashes: the VM restarts on the replica's host with every acknowledged
// append, and never runs twice.
func TestReplicated_ReplicaLossResyncThenPrimaryCrash(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := repGuest(t, l, "rep1")
	primary, peer := v.Host, replicaOf(v).Host
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	sampler := check.StartSampler([]string{"rep1"}, 20*time.Millisecond)
	time.Sleep(2 * time.Second)

	ctx := context.Background()
	t0 := time.Now()
	if err := l.Crash(ctx, peer); err != nil {
		t.Fatal(err)
	}
	after := l.WaitVM("rep1", time.Minute, "with its replica recorded Outdated", replicaState("Outdated", "Off"))
	if after.Host != primary || after.PID != v.PID {
		t.Fatalf("the replica's crash moved or restarted the VM: %s pid %d -> %s pid %d", primary, v.PID, after.Host, after.PID)
	}
	time.Sleep(3 * time.Second)
	acks := w.Acks()
	if len(acks) == 0 || !acks[len(acks)-1].At.After(t0.Add(time.Second)) {
		t.Fatalf("no acknowledged append since the replica's host crashed: the VM did not go on")
	}
	t.Logf("replica host %s crashed: recorded Outdated, longest pause between acknowledged appends %s", peer, maxGap(acks, t0).Round(time.Millisecond))
	if evs := l.Events(t0); !hasEvent(evs, "alarm.replica-lost", "rep1") {
		t.Errorf("no alarm.replica-lost event:\n%s", testenv.Timeline(evs))
	}

	t1 := time.Now()
	if err := l.Heal(ctx, peer); err != nil {
		t.Fatal(err)
	}
	synced := l.WaitVM("rep1", 3*time.Minute, "with its replica UpToDate again", replicaState("UpToDate", "Established"))
	t.Logf("replica resynced %s after %s came back", time.Since(t1).Round(time.Millisecond), peer)
	wantIncremental(t, synced, w.Acks(), t0)

	// The storage network between the two is cut while both still reach
	// etcd: only the primary goes on (after recording the replica
	// Outdated); the peer is not promoted; after the heal the copies
	// converge again.
	tc := time.Now()
	if err := l.CutStorage(ctx, peer); err != nil {
		t.Fatal(err)
	}
	cut := l.WaitVM("rep1", time.Minute, "with its replica recorded Outdated after the link cut", replicaState("Outdated", "Off"))
	time.Sleep(2 * time.Second)
	if acks := w.Acks(); len(acks) == 0 || !acks[len(acks)-1].At.After(tc.Add(time.Second)) {
		t.Fatal("no acknowledged append since the replication link was cut: the primary did not go on")
	}
	if cut.Host != primary || cut.PID != v.PID {
		t.Fatalf("the link cut moved or restarted the VM: now %s pid %d", cut.Host, cut.PID)
	}
	if err := l.Heal(ctx, peer); err != nil {
		t.Fatal(err)
	}
	synced = l.WaitVM("rep1", 3*time.Minute, "with its replica UpToDate after the link came back", replicaState("UpToDate", "Established"))
	wantIncremental(t, synced, w.Acks(), tc)
	t.Logf("replication link cut: recorded Outdated, the primary went on (longest pause %s), UpToDate again %s after the cut began",
		maxGap(w.Acks(), tc).Round(time.Millisecond), time.Since(tc).Round(time.Millisecond))

	t2 := time.Now()
	if err := l.Crash(ctx, primary); err != nil {
		t.Fatal(err)
	}
	moved := l.WaitVM("rep1", recoveryLimit, "running on its replica's host", func(v v1.VM) bool { return v.State == "running" && v.Host == peer })
	l.WaitAnswering(g, v.IP, recoveryLimit)
	t.Logf("primary %s crashed -> answering on %s after %s", primary, moved.Host, time.Since(t2).Round(time.Millisecond))
	time.Sleep(time.Second)
	acks = w.Stop()
	if max := sampler.Stop()["rep1"]; max > 1 {
		t.Errorf("%d QEMU processes of rep1 at once", max)
	}
	verifyLedger(t, g, v.IP, acks)
	t.Logf("timeline:\n%s", testenv.Timeline(l.Events(t0)))
}

// The replica is down, then the primary crashes: the VM is not started
// from the Outdated copy, its status says why, and the operator's override
// starts it there (with the appends acknowledged before the replica was
// lost, and without those after).
func TestReplicated_OutdatedReplicaIsNotPromoted(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := repGuest(t, l, "rep2")
	primary, peer := v.Host, replicaOf(v).Host
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(2 * time.Second)
	ctx := context.Background()
	before := w.Acks()
	if err := l.Crash(ctx, peer); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("rep2", time.Minute, "with its replica recorded Outdated", replicaState("Outdated", "Off"))
	time.Sleep(2 * time.Second)
	w.Stop()
	if err := l.Crash(ctx, primary); err != nil {
		t.Fatal(err)
	}
	if err := l.Heal(ctx, peer); err != nil {
		t.Fatal(err)
	}
	blocked := l.WaitVM("rep2", 2*time.Minute, "reported blocked", func(v v1.VM) bool {
		r := replicaOf(v)
		return r != nil && strings.Contains(r.Blocked, "Outdated")
	})
	t.Logf("blocked: %s", replicaOf(blocked).Blocked)
	time.Sleep(5 * time.Second)
	if v2, err := l.Client.GetVM(ctx, "rep2"); err != nil || v2.State == "running" {
		t.Fatalf("rep2 started from an Outdated replica: %+v %v", v2, err)
	}
	if out, err := l.Vigil("vm", "promote", "rep2"); err == nil || !strings.Contains(out+err.Error(), "accept-data-loss") {
		t.Fatalf("promote without --accept-data-loss: %q %v", out, err)
	}
	if out, err := l.Vigil("vm", "promote", "rep2", "--accept-data-loss"); err != nil {
		t.Fatalf("promote: %s %v", out, err)
	}
	l.WaitVM("rep2", recoveryLimit, "running on the replica's host", func(v v1.VM) bool { return v.State == "running" && v.Host == peer })
	l.WaitAnswering(g, v.IP, recoveryLimit)
	// Only what the replica had: every append acknowledged before it was
	// lost is there.
	verifyLedger(t, g, v.IP, before)
	if evs := l.Events(time.Time{}); !hasEvent(evs, "vm.replica-override", "rep2") {
		t.Errorf("the override left no event")
	}
}

// replicationRuns is how many primary crashes the loop test runs:
// VIGIL_REPLICATION_RUNS, default 2 (the 10 runs:
// VIGIL_REPLICATION_RUNS=10).
func replicationRuns(t *testing.T) int {
	n := 2
	if s := os.Getenv("VIGIL_REPLICATION_RUNS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("VIGIL_REPLICATION_RUNS=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

// The primary's host crashes again and again while a client appends: each
// time the VM restarts on the replica's host with every acknowledged
// append and no interleaving, never two QEMUs; the old primary comes back
// as the replica and is resynced before the next crash.
func TestReplicated_PrimaryCrashLoop(t *testing.T) {
	runs := replicationRuns(t)
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, _ := repGuest(t, l, "rep3")
	ctx := context.Background()
	for i := 1; i <= runs; i++ {
		cur := l.WaitVM("rep3", 3*time.Minute, "running with its replica UpToDate", replicaState("UpToDate", "Established"))
		primary, peer := cur.Host, replicaOf(cur).Host
		var g *guestclient.Client
		for _, h := range l.Hosts() {
			if h != primary && h != peer {
				var err error
				if g, err = l.Guests(h, 3*time.Second); err != nil {
					t.Fatal(err)
				}
			}
		}
		l.WaitAnswering(g, v.IP, recoveryLimit)
		w := check.StartWriter(g, v.IP, 50*time.Millisecond)
		sampler := check.StartSampler([]string{"rep3"}, 20*time.Millisecond)
		time.Sleep(2 * time.Second)
		t0 := time.Now()
		if err := l.Crash(ctx, primary); err != nil {
			t.Fatal(err)
		}
		l.WaitVM("rep3", recoveryLimit, "running on its replica's host", func(v v1.VM) bool { return v.State == "running" && v.Host == peer })
		l.WaitAnswering(g, v.IP, recoveryLimit)
		took := time.Since(t0)
		time.Sleep(time.Second)
		acks := w.Stop()
		if max := sampler.Stop()["rep3"]; max > 1 {
			t.Fatalf("run %d: %d QEMU processes of rep3 at once", i, max)
		}
		verifyLedger(t, g, v.IP, acks)
		t.Logf("run %d/%d: crash of primary %s -> answering on %s after %s", i, runs, primary, peer, took.Round(time.Millisecond))
		if err := l.Heal(ctx, primary); err != nil {
			t.Fatal(err)
		}
	}
}

// A live migration of a replicated VM goes to its replica's host and swaps
// the copies' roles at the cut-over: the client's counter never resets,
// every acknowledged append survives, the replica is UpToDate all along
// (the old primary's copy is the replica at once, with no resync). A move
// to a third host is refused, saying how: move the replica there first,
// which the test does; then a crash of the primary restarts the VM on the
// third host with every append.
func TestReplicated_LiveMigrationSwapsRoles(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := repGuest(t, l, "repm")
	primary, peer := v.Host, replicaOf(v).Host
	third := otherThan(l, primary, peer)
	if out, err := l.Vigil("vm", "migrate", "repm", "--to", third); err == nil || !strings.Contains(out, "can move only there") {
		t.Fatalf("migrating a replicated VM to a third host: want a refusal naming the replica's host, got %v: %s", err, out)
	}
	lastSync := replicaOf(v).LastSync
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	p := startProber(g, v.IP, 10*time.Millisecond)
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	out, err := l.Vigil("vm", "migrate", "repm")
	if err != nil {
		t.Fatalf("vm migrate: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(out, 2))
	moved := migrated(l, "repm", peer)
	assertCleanCutover(t, l, "repm")
	r := replicaOf(moved)
	if r.Host != primary || r.State != "UpToDate" || r.Replication != "Established" {
		t.Fatalf("after the move the replica is %+v, want the old primary %s, UpToDate/Established", r, primary)
	}
	// Redundancy holds from the cut-over on: no loss, no resync.
	time.Sleep(3 * time.Second)
	after := l.WaitVM("repm", 10*time.Second, "still UpToDate", replicaState("UpToDate", "Established"))
	if ls := replicaOf(after).LastSync; ls != nil && (lastSync == nil || ls.At.After(lastSync.At)) {
		t.Errorf("the replica was resynced after the role swap (%d KiB): the copies were not equal at the cut-over", ls.Bytes>>10)
	}
	evs := l.Events(t0)
	for _, typ := range []string{"alarm.replica-lost", "replica.syncing", "host.self-fence"} {
		if hasEvent(evs, typ, "repm") {
			t.Errorf("a role-swap migration logged %s:\n%s", typ, testenv.Timeline(evs))
		}
	}
	gap, answers, problems := p.stop()
	if len(problems) > 0 {
		t.Errorf("the in-guest counter went backwards or reset across the migration: %v", problems)
	}
	t.Logf("migrated %s -> %s (roles swapped); longest client gap %s over %d answers", primary, peer, gap.Round(time.Millisecond), answers)

	// The way to a third host: move the replica there (which the operator
	// must accept: no redundancy until it is synced), then crash the new
	// primary: the VM restarts on the third host with every append.
	if out, err := l.Vigil("vm", "move-replica", "repm", "--to", third); err == nil || !strings.Contains(out, "--accept-no-redundancy") {
		t.Errorf("move-replica without --accept-no-redundancy: want a refusal saying why, got %v: %s", err, out)
	}
	out, err = l.Vigil("vm", "move-replica", "repm", "--to", third, "--accept-no-redundancy", "--timeout", "3m")
	if err != nil {
		t.Fatalf("move-replica: %v\n%s", err, out)
	}
	t.Logf("%s", lastLines(out, 1))
	if r := replicaOf(l.WaitVM("repm", 10*time.Second, "replica on "+third, replicaState("UpToDate", "Established"))); r.Host != third {
		t.Fatalf("replica on %s after move-replica, want %s", r.Host, third)
	}
	sampler := check.StartSampler([]string{"repm"}, 20*time.Millisecond)
	t1 := time.Now()
	if err := l.Crash(context.Background(), peer); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("repm", recoveryLimit, "running on the third host", func(v v1.VM) bool { return v.State == "running" && v.Host == third })
	l.WaitAnswering(g, v.IP, recoveryLimit)
	t.Logf("primary %s crashed -> answering on %s (the replica moved there) after %s", peer, third, time.Since(t1).Round(time.Millisecond))
	time.Sleep(time.Second)
	acks := w.Stop()
	if max := sampler.Stop()["repm"]; max > 1 {
		t.Errorf("%d QEMU processes of repm at once after the crash", max)
	}
	verifyLedger(t, g, v.IP, acks)
	t.Logf("timeline:\n%s", testenv.Timeline(l.Events(t0)))
}

// Maintenance mode on a replicated VM's primary host evacuates both: the
// VM live-migrates to its replica's host (the roles swap), then the
// replica, now on the host in maintenance, moves to the third host and is
// synced there in full. The guest never reboots and every acknowledged
// append survives.
func TestReplicated_MaintenanceMovesVMAndReplica(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := repGuest(t, l, "repe")
	primary, peer := v.Host, replicaOf(v).Host
	third := otherThan(l, primary, peer)
	before, err := g.Counter(context.Background(), v.IP)
	if err != nil {
		t.Fatal(err)
	}
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(2 * time.Second)
	t0 := time.Now()
	out, err := l.Vigil("host", "maintenance", "enter", primary, "--timeout", "5m")
	if err != nil {
		t.Fatalf("maintenance enter: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	moved := l.WaitVM("repe", 3*time.Minute, "on "+peer+" with its replica UpToDate on "+third, func(x v1.VM) bool {
		r := replicaOf(x)
		return x.State == "running" && x.Host == peer && r != nil && r.Host == third && r.State == "UpToDate" && r.Replication == "Established"
	})
	t.Logf("evacuated %s: VM on %s, replica on %s UpToDate %s after maintenance began", primary, moved.Host, third, time.Since(t0).Round(time.Millisecond))
	c, err := g.Counter(context.Background(), v.IP)
	if err != nil || c.BootID != before.BootID {
		t.Errorf("the VM was not live-migrated (rebooted or not answering): %+v %v", c, err)
	}
	if !strings.Contains(out, "evacuated") {
		t.Errorf("maintenance enter did not report the host evacuated:\n%s", out)
	}
	time.Sleep(time.Second)
	verifyLedger(t, g, v.IP, w.Stop())
	if out, err := l.Vigil("host", "maintenance", "exit", primary); err != nil {
		t.Fatalf("maintenance exit: %v\n%s", err, out)
	}
	t.Logf("timeline:\n%s", testenv.Timeline(l.Events(t0)))
}

// A host dies during a live migration of a replicated VM to its replica's
// host: the destination mid-pre-copy (it keeps the replica too: the source
// records it Outdated, goes on alone, and the migration fails), the
// source mid-pre-copy (HA promotes the replica, whose copy has
// every write), the source right after the cut-over (the destination runs
// on, degraded: it records its replica Outdated; or, when the source's
// host died with the tail of the migration stream unsent, the destination
// restarts the VM from its own copy), or the destination right after the
// cut-over (HA restarts the VM on the old primary's copy, which the swap
// made the replica, UpToDate). Every time: one QEMU, every acknowledged
// append, and the VM on the host the record names primary.
func TestReplicated_HostDeathDuringRoleSwap(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 4, Faults: true, AgentArgs: []string{"--debug-cutover-delay=4s"}})
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatal(out)
	}
	cases := []struct {
		name, phase, kill string
		slow              bool
		endsOn            string // where the VM runs afterwards
	}{
		{"precopy-kill-target", "migrating", "target", true, "source"},
		{"precopy-kill-source", "migrating", "source", true, "target"},
		{"cutover-kill-source", "switchover", "source", false, "target"},
		{"cutover-kill-target", "switchover", "target", false, "source"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := l.For(t)
			name := fmt.Sprintf("rsw%d", i)
			l.CreateVM(testenv.ExampleSpec(t, "replicated-guest.yaml", name, func(vm *spec.VM) {
				if c.slow {
					vm.Spec.Migration.MaxBandwidth = 8 * spec.MiB
				}
			}), name)
			v := l.WaitVM(name, 3*time.Minute, "running with its replica UpToDate", replicaState("UpToDate", "Established"))
			source, target := v.Host, replicaOf(v).Host
			g, err := l.Guests(otherThan(l, source, target), 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			before := l.WaitAnswering(g, v.IP, bootLimit)
			if c.slow {
				dirty64(t, l, v.IP, otherThan(l, source, target))
			}
			w := check.StartWriter(g, v.IP, 100*time.Millisecond)
			if _, err := l.Client.Migrate(context.Background(), name, ""); err != nil {
				t.Fatal(err)
			}
			waitPhase(t, l, name, c.phase)
			victim := map[string]string{"source": source, "target": target}[c.kill]
			t.Logf("crashing the %s (%s) in phase %s", c.kill, victim, c.phase)
			crashed := time.Now()
			if err := l.Crash(context.Background(), victim); err != nil {
				t.Fatal(err)
			}
			after := l.WaitVM(name, time.Minute, "running on a live host", func(x v1.VM) bool { return x.State == "running" && x.Host != victim })
			l.WaitAnswering(g, v.IP, recoveryLimit)
			waitOneQEMU(t, name, 30*time.Second)
			t.Logf("crash -> running on %s after %s; timeline:\n%s", after.Host, time.Since(crashed).Round(time.Millisecond),
				testenv.Timeline(l.Events(crashed.Add(-5*time.Second))))
			time.Sleep(time.Second)
			verifyLedger(t, g, v.IP, w.Stop())
			now, _ := g.Counter(context.Background(), v.IP)
			if want := map[string]string{"source": source, "target": target}[c.endsOn]; after.Host != want {
				t.Errorf("the VM runs on %s, want %s (the %s: the only live copy)", after.Host, want, c.endsOn)
			}
			t.Logf("the VM continues on %s; same boot: %v", after.Host, now.BootID == before.BootID)
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
