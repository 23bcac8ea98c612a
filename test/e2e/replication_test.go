package e2e

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/guestclient"
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
