package e2e

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/lab"
	"github.com/vigilha/vigil/internal/testenv"
)

// firstEvent returns the first event of a type for a VM (any VM if vm is
// empty) and host (any if empty), and whether there was one.
func firstEvent(evs []client.Event, typ, vm, host string) (client.Event, bool) {
	for _, e := range evs {
		if e.Type == typ && (vm == "" || e.VM == vm) && (host == "" || e.Host == host) {
			return e, true
		}
	}
	return client.Event{}, false
}

// TestAgentHang_WatchdogResetsHostBeforeFailover hangs only the agent of an
// HA VM's host (its QEMU keeps running), first for 0.5 s, below every
// deadline: nothing may happen. Then for 10 s, 20 s and 60 s: each time
// the host's watchdog must reset it (QEMU included) before the leader
// places the VM elsewhere; a 20 ms sampler never sees two QEMUs of the VM;
// a client polling the VM never hears the old instance after the new one;
// no acknowledged ledger write is lost; the host reboots and rejoins.
func TestAgentHang_WatchdogResetsHostBeforeFailover(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{RebootDelay: 3 * time.Second})
	ctx := context.Background()
	v, _ := haGuest(t, l, "hang1", nil)

	// A short hang: no reset, no failover, the same QEMU.
	pids := check.QEMUProcs("hang1")
	t0 := time.Now()
	if err := l.FreezeProcess(ctx, v.Host, lab.RoleAgent); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := l.ThawProcess(ctx, v.Host, lab.RoleAgent); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	if now := check.QEMUProcs("hang1"); !slices.Equal(now, pids) {
		t.Fatalf("a 0.5 s agent hang changed the VM's QEMU: %v -> %v", pids, now)
	}
	if b, err := l.BoardStatus(v.Host); err != nil || b.Fires != 0 {
		t.Fatalf("a 0.5 s agent hang fired the watchdog: %+v %v", b, err)
	}
	for _, bad := range []string{"vm.fenced", "vm.restart-placed", "host.self-fence", "host.lease-expired"} {
		if evs := l.Events(t0); hasEvent(evs, bad, "") {
			t.Fatalf("a 0.5 s agent hang caused %s:\n%s", bad, testenv.Timeline(evs))
		}
	}

	for _, hang := range []time.Duration{10 * time.Second, 20 * time.Second, 60 * time.Second} {
		t.Run(hang.String(), func(t *testing.T) {
			l := l.For(t)
			cur := l.WaitVM("hang1", recoveryLimit, "running", func(x v1.VM) bool { return x.State == "running" })
			host := cur.Host
			g := l.Guest(host)
			l.WaitAnswering(g, cur.IP, recoveryLimit)
			fired, _ := l.BoardStatus(host)
			sampler := check.StartSampler([]string{"hang1"}, 20*time.Millisecond)
			poller := check.StartPoller(g, cur.IP, 200*time.Millisecond)
			w := check.StartWriter(g, cur.IP, 100*time.Millisecond)
			time.Sleep(time.Second)
			t0 := time.Now()
			if err := l.FreezeProcess(ctx, host, lab.RoleAgent); err != nil {
				t.Fatal(err)
			}
			moved := l.WaitVM("hang1", recoveryLimit, "running elsewhere", movedFrom(host))
			l.WaitAnswering(g, cur.IP, recoveryLimit)
			if rest := hang - time.Since(t0); rest > 0 {
				time.Sleep(rest)
			}
			// Gone with the reset: thawing finds nothing to thaw.
			if err := l.ThawProcess(ctx, host, lab.RoleAgent); err != nil {
				t.Fatal(err)
			}
			waitHostAlive(t, l, host, 60*time.Second)
			time.Sleep(2 * time.Second)
			acks := w.Stop()
			pr := poller.Stop()
			if max := sampler.Stop()["hang1"]; max > 1 {
				t.Errorf("%d QEMU processes of hang1 at once while the agent of %s hung", max, host)
			}
			if err := pr.Err(); err != nil {
				t.Error(err)
			}
			if len(pr.BootIDs) < 2 {
				t.Errorf("the client never heard the restarted instance: %s", pr)
			}
			verifyLedger(t, g, cur.IP, acks)
			b, err := l.BoardStatus(host)
			if err != nil || b.Fires != fired.Fires+1 {
				t.Fatalf("the watchdog of %s did not fire once: %+v (before %+v) %v", host, b, fired, err)
			}
			evs := l.Events(t0)
			placed, ok := firstEvent(evs, "vm.restart-placed", "hang1", "")
			if !ok {
				t.Fatalf("no restart placement:\n%s", testenv.Timeline(evs))
			}
			// The order that matters: the host was reset (QEMU gone) before
			// the leader placed the VM elsewhere.
			if !b.LastFire.Before(placed.Time) {
				t.Errorf("the watchdog fired at %s, after the restart was placed at %s", b.LastFire.Format("15:04:05.000"), placed.Time.Format("15:04:05.000"))
			}
			if !hasEvent(evs, "host.watchdog-reset", "") {
				t.Errorf("no host.watchdog-reset event after %s rebooted:\n%s", host, testenv.Timeline(evs))
			}
			t.Logf("agent of %s hung for %s: watchdog reset %s after the hang, restart placed %s after it (%s later), running on %s; client: %s",
				host, hang, b.LastFire.Sub(t0).Round(time.Millisecond), placed.Time.Sub(t0).Round(time.Millisecond),
				placed.Time.Sub(b.LastFire).Round(time.Millisecond), moved.Host, pr)
		})
	}
}

// TestQEMUFrozen_AgentRestart_NeverTwoCopies freezes one VM's QEMU, restarts
// the agent meanwhile (it cannot reattach to a QEMU that does not answer,
// so it kills it, which lands when the QEMU thaws), and thaws the QEMU: the
// VM never runs twice, on that host or anywhere, and comes back.
func TestQEMUFrozen_AgentRestart_NeverTwoCopies(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "qfrz1", nil)
	old := check.QEMUProcs("qfrz1")
	sampler := check.StartSampler([]string{"qfrz1"}, 20*time.Millisecond)
	t0 := time.Now()
	if err := l.FreezeProcess(ctx, v.Host, lab.RoleQEMUPrefix+"qfrz1"); err != nil {
		t.Fatal(err)
	}
	if err := l.StopAgent(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	// Longer than the agent tries to reattach (10 s): the kill is pending.
	time.Sleep(15 * time.Second)
	if now := check.QEMUProcs("qfrz1"); !slices.Equal(now, old) {
		t.Errorf("while the old QEMU was frozen the VM's QEMUs changed: %v -> %v", old, now)
	}
	if err := l.ThawProcess(ctx, v.Host, lab.RoleQEMUPrefix+"qfrz1"); err != nil {
		t.Fatal(err)
	}
	after := l.WaitVM("qfrz1", recoveryLimit, "running again", func(x v1.VM) bool {
		return x.State == "running" && x.PID != 0 && !slices.Contains(old, x.PID)
	})
	l.WaitAnswering(g, v.IP, recoveryLimit)
	if max := sampler.Stop()["qfrz1"]; max > 1 {
		t.Errorf("%d QEMU processes of qfrz1 at once", max)
	}
	if now := check.QEMUProcs("qfrz1"); len(now) != 1 || slices.Contains(old, now[0]) {
		t.Errorf("QEMUs of qfrz1 after the thaw: %v (old %v)", now, old)
	}
	evs := l.Events(t0)
	t.Logf("running again on %s (pid %d):\n%s", after.Host, after.PID, testenv.Timeline(evs))
}

// TestHostFreeze_WatchdogResetsHost freezes a whole host. Its board
// watchdog (outside the host, as hardware is) sees the feeder stop and
// resets the host: its QEMU is gone before the VM restarts elsewhere, and
// the host reboots and rejoins without thawing anything.
func TestHostFreeze_WatchdogResetsHost(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{RebootDelay: 3 * time.Second})
	ctx := context.Background()
	v, g := haGuest(t, l, "hfrz1", nil)
	old := check.QEMUProcs("hfrz1")
	sampler := check.StartSampler([]string{"hfrz1"}, 20*time.Millisecond)
	poller := check.StartPoller(g, v.IP, 200*time.Millisecond)
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := l.Freeze(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("hfrz1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	l.WaitAnswering(g, v.IP, recoveryLimit)
	if err := l.Thaw(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	waitHostAlive(t, l, v.Host, 60*time.Second)
	time.Sleep(2 * time.Second)
	acks := w.Stop()
	pr := poller.Stop()
	if max := sampler.Stop()["hfrz1"]; max > 1 {
		t.Errorf("%d QEMUs of hfrz1 at once", max)
	}
	if err := pr.Err(); err != nil {
		t.Error(err)
	}
	verifyLedger(t, g, v.IP, acks)
	if slices.ContainsFunc(check.QEMUProcs("hfrz1"), func(p int) bool { return slices.Contains(old, p) }) {
		t.Error("the frozen host's QEMU survived its reset")
	}
	b, err := l.BoardStatus(v.Host)
	evs := l.Events(t0)
	placed, ok := firstEvent(evs, "vm.restart-placed", "hfrz1", "")
	if err != nil || b.Fires != 1 || !ok || !b.LastFire.Before(placed.Time) {
		t.Errorf("want the watchdog to fire once, before the restart was placed: board %+v (%v), placed %v %s\n%s",
			b, err, ok, placed.Time.Format("15:04:05.000"), testenv.Timeline(evs))
	}
	t.Logf("watchdog reset %s after the freeze; %s", b.LastFire.Sub(t0).Round(time.Millisecond), pr)
}

// TestHostFreezeThaw_KernelWatchdogFreezesToo is the softdog case: the
// watchdog is part of the frozen kernel, so it cannot reset the host. The
// storage fence and the kill on thaw still keep the VM from running twice on
// its disk: the stale copy's writes never land, and it dies once thawed.
func TestHostFreezeThaw_KernelWatchdogFreezesToo(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{Watchdog: lab.WatchdogKernel})
	v, g := haGuest(t, l, "frz1", nil)
	oldPIDs := check.QEMUProcs("frz1")
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	ctx := context.Background()
	t0 := time.Now()
	if err := l.Freeze(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	thawed := false
	defer func() {
		if !thawed {
			_ = l.Thaw(ctx, v.Host)
		}
	}()
	after := l.WaitVM("frz1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	l.WaitAnswering(g, v.IP, recoveryLimit)
	if b, err := l.BoardStatus(v.Host); err != nil || b.Fires != 0 {
		t.Errorf("a kernel watchdog fired while frozen with its host: %+v %v", b, err)
	}
	time.Sleep(2 * time.Second) // the new instance writes while the old one is frozen
	if err := l.Thaw(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	thawed = true
	// The stale QEMU wakes up fenced: it must be killed, and its writes
	// must not land.
	deadline := time.Now().Add(15 * time.Second)
	for slices.ContainsFunc(check.QEMUProcs("frz1"), func(p int) bool { return slices.Contains(oldPIDs, p) }) {
		if time.Now().After(deadline) {
			t.Fatalf("the thawed host's stale QEMU %v is still alive 15s after thaw", oldPIDs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(2 * time.Second)
	acks := w.Stop()
	verifyLedger(t, g, v.IP, acks)
	if n := len(check.QEMUProcs("frz1")); n != 1 {
		t.Errorf("%d QEMU processes of frz1 after thaw, want 1", n)
	}
	l.WaitVM("frz1", 5*time.Second, "still on "+after.Host, func(x v1.VM) bool { return x.Host == after.Host && x.State == "running" })
	waitHostAlive(t, l, v.Host, 60*time.Second)
	t.Logf("timeline:\n%s", testenv.Timeline(l.Events(t0)))
}

// TestSoak_NoFalseFailoversUnderLoad runs two HA VMs with both cores
// saturated for VIGIL_SOAK (default 1 min, bounded for CI; `VIGIL_SOAK=30m`
// for the real soak): nothing fails, so every fence, restart, self-fence or
// watchdog reset would be a false one. The watchdog's feeding window after
// a lease renewal (0.95 s) must hold on a loaded host.
func TestSoak_NoFalseFailoversUnderLoad(t *testing.T) {
	d := soakDuration(t, time.Minute)
	l := testenv.StartLab(t, testenv.LabOptions{})
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatalf("config: %v: %s", err, out)
	}
	for _, n := range []string{"soak1", "soak2"} {
		haGuest(t, l, n, nil)
	}
	r, err := l.Soak(context.Background(), []string{"soak1", "soak2"}, d, 2, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("soak of %s with 2 burners: false failovers %d (self-fences %d, fences %d, restarts placed %d, local restarts %d, resets %d, watchdog resets %d, QEMUs changed %v); lease expiries %d, suspicions %d",
		r.Duration.Round(time.Second), r.FalseFailovers(), r.SelfFences, r.Fenced, r.RestartsPlaced, r.LocalRestarts, r.Resets, r.WatchdogResets, r.QEMUChanged, r.LeaseExpired, r.Suspected)
	if r.FalseFailovers() != 0 || r.LeaseExpired != 0 {
		t.Errorf("false failovers on a loaded cluster where nothing failed: %d (lease expiries %d)", r.FalseFailovers(), r.LeaseExpired)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// soakDuration is VIGIL_SOAK (a Go duration: the long soak), or def when
// it is not set (the bounded form CI runs).
func soakDuration(t *testing.T, def time.Duration) time.Duration {
	t.Helper()
	s := os.Getenv("VIGIL_SOAK")
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("VIGIL_SOAK=%q: %v", s, err)
	}
	return d
}
