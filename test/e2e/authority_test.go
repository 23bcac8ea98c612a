package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/lab"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// noneOf fails the test if any of the event types happened (for any VM).
func noneOf(t *testing.T, l *testenv.Lab, since time.Time, what string, types ...string) {
	t.Helper()
	evs := l.Events(since)
	for _, typ := range types {
		if hasEvent(evs, typ, "") {
			t.Errorf("%s caused %s:\n%s", what, typ, testenv.Timeline(evs))
		}
	}
}

// TestRecreatedVM_RunsOnTheHostThatFencedItsNamesake: a VM migrated off a
// host (which revokes that host's access), deleted, and created again under
// the same name is a new VM: it runs on that host and stays running. Before
// storage generations and UIDs, the old fence killed it at every start and
// it ended failed at its restart limit.
func TestRecreatedVM_RunsOnTheHostThatFencedItsNamesake(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v := l.CreateVM(testenv.HASpec(t, "again", nil), "again")
	src := v.Host
	if out, err := l.Vigil("vm", "migrate", "again"); err != nil {
		t.Fatalf("migrate: %v: %s", err, out)
	}
	l.WaitVM("again", recoveryLimit, "moved", movedFrom(src))
	t0 := time.Now()
	if err := l.Client.DeleteVM(ctx, "again"); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := l.Client.GetVM(ctx, "again"); err != nil {
			break
		}
		if time.Since(t0) > 60*time.Second {
			t.Fatal("the VM still exists 60 s after delete")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("delete of a migrated VM took %s", time.Since(t0).Round(time.Millisecond))
	t1 := time.Now()
	w := l.CreateVM(testenv.HASpec(t, "again", nil), "again")
	if w.Host != src {
		if out, err := l.Vigil("vm", "migrate", "again", "--to", src); err != nil {
			t.Fatalf("migrate the re-created VM to %s: %v: %s", src, err, out)
		}
	}
	l.WaitVM("again", recoveryLimit, "running on "+src, func(x v1.VM) bool { return x.Host == src && x.State == "running" })
	pids := check.QEMUProcs("again")
	time.Sleep(10 * time.Second)
	if now := check.QEMUProcs("again"); len(now) != 1 || !slices.Equal(now, pids) {
		t.Fatalf("the re-created VM does not stay running on %s: QEMUs %v -> %v", src, pids, now)
	}
	noneOf(t, l, t1, "re-creating a VM under its old name", "host.self-fence", "alarm.restart-limit", "vm.restarted")
}

// TestStorageControlHang_NoVMTouched: the storage server's control process
// hangs (its qemu-storage-daemon keeps serving the disks), then its control
// port is cut from every host: a datastore that is down for everyone moves
// nothing and kills nothing, and raises an alarm.
func TestStorageControlHang_NoVMTouched(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	vm1, g := haGuest(t, l, "sc1", nil)
	v2, _ := haGuest(t, l, "sc2", nil)
	pids := map[string][]int{"sc1": check.QEMUProcs("sc1"), "sc2": check.QEMUProcs("sc2")}
	w := check.StartWriter(g, vm1.IP, 200*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	// A hang long enough for every agent to report the datastore lost (3 s).
	if err := l.FreezeProcess(ctx, "storage", lab.RoleStorageControl); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	if err := l.ThawProcess(ctx, "storage", lab.RoleStorageControl); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	if err := l.CutStorageControl(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	if err := l.Heal(ctx, "storage"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(8 * time.Second)
	for _, vm := range []string{"sc1", "sc2"} {
		if now := check.QEMUProcs(vm); !slices.Equal(now, pids[vm]) {
			t.Errorf("%s: the storage control outage changed its QEMU: %v -> %v", vm, pids[vm], now)
		}
	}
	verifyLedger(t, g, vm1.IP, w.Stop())
	if _, err := g.Counter(ctx, v2.IP); err != nil {
		t.Errorf("sc2 stopped serving: %v", err)
	}
	noneOf(t, l, t0, "a storage control outage", "vm.fenced", "vm.restart-placed", "host.self-fence", "vm.evicted", "host.watchdog-reset")
	if evs := l.Events(t0); !hasEvent(evs, "alarm.datastore-unreachable", "") {
		t.Errorf("no alarm for a datastore down for every host:\n%s", testenv.Timeline(evs))
	}
}

// TestManagementBlip_MovesNothing: the management network of an HA VM's
// host goes down for 2 s and for 3 s (its lease expires; the storage path
// is fine): shorter than the isolation timeout, so nothing is killed,
// fenced or moved, and the host carries on.
func TestManagementBlip_MovesNothing(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "blip1", nil)
	pids := check.QEMUProcs("blip1")
	before, err := g.Counter(ctx, v.IP)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for _, d := range []time.Duration{2 * time.Second, 3 * time.Second} {
		if err := l.Partition(ctx, v.Host); err != nil {
			t.Fatal(err)
		}
		time.Sleep(d)
		if err := l.Heal(ctx, v.Host); err != nil {
			t.Fatal(err)
		}
		waitHostAlive(t, l, v.Host, 30*time.Second)
		time.Sleep(8 * time.Second)
	}
	if now := check.QEMUProcs("blip1"); !slices.Equal(now, pids) {
		t.Fatalf("management blips changed the VM's QEMU: %v -> %v\n%s", pids, now, testenv.Timeline(l.Events(t0)))
	}
	if c, err := g.Counter(ctx, v.IP); err != nil || c.BootID != before.BootID {
		t.Errorf("the VM rebooted or stopped serving: %+v %v", c, err)
	}
	noneOf(t, l, t0, "management blips", "vm.fenced", "vm.restart-placed", "host.self-fence", "host.watchdog-reset")
	if b, err := l.BoardStatus(v.Host); err != nil || b.Fires != 0 {
		t.Errorf("the host's watchdog fired: %+v %v", b, err)
	}
}

// TestSelfFencedVM_IsFencedNotCrashed: quorum lost and the VM's host cut
// from its storage too, so its agent kills the VM (both leases lapsed).
// That kill is not a crash: once the cluster heals, the VM is reported
// fenced, costs nothing of its restart budget, is not restarted by VM
// monitoring, and HA places it again.
func TestSelfFencedVM_IsFencedNotCrashed(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "sf1", nil)
	old := check.QEMUProcs("sf1")
	t0 := time.Now()
	cutPeers(t, l, true)
	healed := false
	defer func() {
		if !healed {
			cutPeers(t, l, false)
		}
	}()
	if err := l.CutStorage(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for slices.ContainsFunc(check.QEMUProcs("sf1"), func(p int) bool { return slices.Contains(old, p) }) {
		if time.Now().After(deadline) {
			t.Fatal("the VM of a host with neither lease was not self-fenced")
		}
		time.Sleep(100 * time.Millisecond)
	}
	cutPeers(t, l, false)
	healed = true
	if err := l.Heal(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("sf1", recoveryLimit, "running again", func(x v1.VM) bool { return x.State == "running" })
	l.WaitAnswering(g, v.IP, recoveryLimit)
	evs := l.Events(t0)
	if !hasEvent(evs, "host.self-fence", "sf1") || !hasEvent(evs, "vm.restart-placed", "sf1") {
		t.Errorf("want a self-fence, then an HA placement:\n%s", testenv.Timeline(evs))
	}
	for _, bad := range []string{"vm.restarted", "alarm.restart-limit", "vm.failed"} {
		if hasEvent(evs, bad, "sf1") {
			t.Errorf("a self-fenced VM was treated as a crash (%s):\n%s", bad, testenv.Timeline(evs))
		}
	}
}

// TestQuorumLoss_NonRestartableHAVMsKept: an HA VM that the leader would
// never restart elsewhere (its disk is host-local) is not self-fenced when
// etcd loses quorum: nothing could run it twice.
func TestQuorumLoss_NonRestartableHAVMsKept(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "loc1", func(vm *spec.VM) { vm.Spec.Disks[0].Datastore = "local" })
	pids := check.QEMUProcs("loc1")
	t0 := time.Now()
	cutPeers(t, l, true)
	defer cutPeers(t, l, false)
	time.Sleep(10 * time.Second)
	if now := check.QEMUProcs("loc1"); !slices.Equal(now, pids) {
		t.Errorf("quorum loss killed a non-restartable HA VM: %v -> %v", pids, now)
	}
	if _, err := g.Counter(context.Background(), v.IP); err != nil {
		t.Errorf("it stopped serving: %v", err)
	}
	cutPeers(t, l, false)
	time.Sleep(5 * time.Second)
	noneOf(t, l, t0, "quorum loss", "host.self-fence", "vm.fenced", "vm.restart-placed")
}

// TestHealedHost_VMComesBack: a VM whose host crashed and that no other
// host can take (every host is full) is fenced and stays down; when its
// host comes back, the VM runs there again, under a new generation.
func TestHealedHost_VMComesBack(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{HostCPUs: 1})
	ctx := context.Background()
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatalf("config: %v: %s", err, out)
	}
	var v v1.VM
	var g *guestclient.Client
	for i, h := range []string{"host1", "host2", "host3"} {
		v, g = haGuest(t, l, "full"+strconv.Itoa(i+1), func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{h} })
		if v.Host != h {
			t.Fatalf("test setup: %s on %s, want %s", v.Name, v.Host, h)
		}
	}
	t0 := time.Now()
	if err := l.Crash(ctx, "host3"); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("full3", recoveryLimit, "down", func(x v1.VM) bool { return x.State != "running" })
	time.Sleep(8 * time.Second)
	if evs := l.Events(t0); !hasEvent(evs, "vm.fenced", "full3") || hasEvent(evs, "vm.restart-placed", "full3") {
		t.Fatalf("want full3 fenced and not placed anywhere (no room):\n%s", testenv.Timeline(evs))
	}
	if err := l.Heal(ctx, "host3"); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("full3", recoveryLimit, "running on host3 again", func(x v1.VM) bool { return x.State == "running" && x.Host == "host3" })
	l.WaitAnswering(g, v.IP, recoveryLimit)
}

// TestQEMUStoppedWhileAgentDown_HAVMRestarts: a service manager stops an HA
// VM's QEMU cleanly (SIGTERM) while the agent is down, as when it stops the
// whole unit. That is not the guest powering off: the VM is not left off.
func TestQEMUStoppedWhileAgentDown_HAVMRestarts(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "term1", nil)
	old := check.QEMUProcs("term1")
	if err := l.StopAgent(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	for _, pid := range old {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
	}
	for len(check.QEMUProcs("term1")) > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	if err := l.StartAgent(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	after := l.WaitVM("term1", recoveryLimit, "running again", func(x v1.VM) bool {
		return x.State == "running" && x.PID != 0 && !slices.Contains(old, x.PID)
	})
	if after.Power != "running" {
		t.Errorf("desired power is %q, want running", after.Power)
	}
	l.WaitAnswering(g, v.IP, recoveryLimit)
}

// otherHost is a lab host other than h.
func otherHost(l *testenv.Lab, h string) string {
	for _, x := range l.Hosts() {
		if x != h {
			return x
		}
	}
	return h
}

// TestLeaseRevokedEarly_NothingMoves forces the case of a paused etcd
// leader that wakes up and revokes a live host's lease early
// (etcd-io/etcd#15247): the test revokes it itself. The host's datastore
// heartbeat is fresh, so the leader waits (the isolation timeout) instead
// of fencing, and the agent takes a new lease within a second: nothing is
// fenced, moved, killed or reset.
func TestLeaseRevokedEarly_NothingMoves(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, _ := haGuest(t, l, "rev1", nil)
	pids := check.QEMUProcs("rev1")
	c := l.Etcd(otherHost(l, v.Host))
	resp, err := c.Get(ctx, "/vigil/s/alive/"+v.Host)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Fatalf("the host's liveness key: %v %v", resp, err)
	}
	t0 := time.Now()
	if _, err := c.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	waitHostAlive(t, l, v.Host, 10*time.Second)
	t.Logf("host %s had a lease again %s after the revocation", v.Host, time.Since(t0).Round(time.Millisecond))
	time.Sleep(10 * time.Second)
	if now := check.QEMUProcs("rev1"); !slices.Equal(now, pids) {
		t.Fatalf("an early lease revocation changed the VM's QEMU: %v -> %v\n%s", pids, now, testenv.Timeline(l.Events(t0)))
	}
	evs := l.Events(t0)
	if !hasEvent(evs, "host.lease-expired", "") {
		t.Fatalf("the revocation was not seen as a lease expiry: the test proved nothing\n%s", testenv.Timeline(evs))
	}
	noneOf(t, l, t0, "an early lease revocation", "vm.fenced", "vm.restart-placed", "host.self-fence", "host.watchdog-reset")
}

// TestUnstartableVM_LowerClassesGoOn: a high-priority VM that cannot start
// on any survivor (its kernel is gone) no longer holds back the lower
// classes: after a bounded number of failed starts HA raises an alarm and
// the low-priority VM of the same crashed host is restarted. Before the
// bound, the high VM cycled start-failed -> evict -> place forever and the
// low one was never placed.
func TestUnstartableVM_LowerClassesGoOn(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	dir := t.TempDir()
	// QEMU runs as an unprivileged user: it must reach the kernel.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"vmlinuz", "initramfs.img"} {
		b, err := os.ReadFile(filepath.Join(testenv.DefaultImageDir, "vigil-guest", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hi := l.CreateVM(testenv.HASpec(t, "hi1", func(vm *spec.VM) {
		vm.Spec.Boot = spec.Boot{Kernel: filepath.Join(dir, "vmlinuz"), Initrd: filepath.Join(dir, "initramfs.img")}
		vm.Spec.HA.Priority = spec.PriorityHigh
		vm.Spec.HA.Monitoring.GuestHeartbeat = false
	}), "hi1")
	lo, g := haGuest(t, l, "lo1", func(vm *spec.VM) {
		vm.Spec.HA.Priority = spec.PriorityLow
		vm.Spec.Placement.Hosts.Should = []string{hi.Host}
	})
	if lo.Host != hi.Host {
		t.Fatalf("test setup: lo1 on %s, hi1 on %s", lo.Host, hi.Host)
	}
	// The kernel disappears (an image deleted, a path that only the old
	// host had): no survivor can start hi1.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := l.Crash(ctx, hi.Host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("lo1", 2*recoveryLimit, "restarted elsewhere", movedFrom(hi.Host))
	l.WaitAnswering(g, lo.IP, recoveryLimit)
	evs := l.Events(t0)
	if !hasEvent(evs, "alarm.start-failed", "hi1") {
		t.Fatalf("no alarm.start-failed for hi1:\n%s", testenv.Timeline(evs))
	}
	// HA stopped moving hi1: no more placements of it.
	placed := func() int {
		n := 0
		for _, e := range l.Events(t0) {
			if e.VM == "hi1" && e.Type == "vm.restart-placed" {
				n++
			}
		}
		return n
	}
	before := placed()
	time.Sleep(10 * time.Second)
	if after := placed(); after != before {
		t.Errorf("HA kept placing hi1 after its alarm: %d -> %d placements:\n%s", before, after, testenv.Timeline(l.Events(t0)))
	}
	if got := check.QEMUProcs("hi1"); len(got) != 0 {
		t.Errorf("hi1 has QEMUs %v, want none (it cannot start)", got)
	}
}
