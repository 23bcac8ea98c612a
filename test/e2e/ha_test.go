package e2e

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/client"
	"github.com/vigilha/vigil/internal/guestclient"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// recoveryLimit is the generous bound within which a failed-over VM's
// service must answer again (lease + fence + boot under TCG on 2 cores).
const recoveryLimit = 90 * time.Second

// haGuest creates an HA guest from examples/ha-guest.yaml and waits until
// it answers; it returns the VM and a guest client from another host.
func haGuest(t *testing.T, l *testenv.Lab, name string, edit func(*spec.VM)) (v1.VM, *guestclient.Client) {
	t.Helper()
	v := l.CreateVM(testenv.HASpec(t, name, edit), name)
	g := l.Guest(v.Host)
	l.WaitAnswering(g, v.IP, bootLimit)
	return v, g
}

// haGuestOnLeader starts an HA guest on the host that runs the Vigil
// leader: the cases where the failing host also runs the control plane.
func haGuestOnLeader(t *testing.T, l *testenv.Lab, name string) (v1.VM, *guestclient.Client) {
	t.Helper()
	cl, err := l.Client.Cluster(context.Background())
	if err != nil || cl.VigilLeader == "" {
		t.Fatalf("no Vigil leader: %+v %v", cl, err)
	}
	v, g := haGuest(t, l, name, func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{cl.VigilLeader} })
	if v.Host != cl.VigilLeader {
		t.Fatalf("test setup: VM on %s, leader %s", v.Host, cl.VigilLeader)
	}
	t.Logf("%s on %s: Vigil leader %s, etcd leader %s", name, v.Host, cl.VigilLeader, cl.EtcdLeader)
	return v, g
}

func movedFrom(host string) func(v1.VM) bool {
	return func(v v1.VM) bool { return v.State == "running" && v.Host != "" && v.Host != host }
}

func hasEvent(evs []client.Event, typ, vm string) bool {
	return slices.ContainsFunc(evs, func(e client.Event) bool { return e.Type == typ && (vm == "" || e.VM == vm) })
}

// verifyLedger reads the VM's ledger and checks every acknowledged append
// survived and no two instances wrote.
func verifyLedger(t *testing.T, g *guestclient.Client, ip string, acks []check.Ack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A read is retried: a guest that has just booted under TCG on a busy
	// machine can miss one request's timeout, and a read changes nothing.
	var recs []guestclient.Record
	var err error
	for {
		if recs, err = g.Ledger(ctx, ip); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("read ledger: %v", err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := check.VerifyLedger(recs, acks); err != nil {
		t.Fatalf("ledger: %v", err)
	}
	if len(acks) == 0 {
		t.Fatal("the writer saw no acknowledged append: the test proved nothing")
	}
	t.Logf("ledger: %d records, all %d acknowledged appends present, no interleaving", len(recs), len(acks))
}

func TestHostCrash_RestartsHAVMsOnSurvivors(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "crash1", nil)
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	sampler := check.StartSampler([]string{"crash1"}, 20*time.Millisecond)
	t0 := time.Now()
	if err := l.Crash(context.Background(), v.Host); err != nil {
		t.Fatal(err)
	}
	after := l.WaitVM("crash1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	l.WaitAnswering(g, v.IP, recoveryLimit)
	t.Logf("crash %s -> answering on %s after %s", v.Host, after.Host, time.Since(t0).Round(time.Millisecond))
	evs := checkFailedOver(t, l, g, v, w, sampler, t0)
	t.Logf("timeline:\n%s", testenv.Timeline(evs))
}

// checkFailedOver checks a VM that failed over after its host crashed at
// t0: never two QEMUs of it at once (sampler), every acknowledged write of
// w kept, and the whole failover in the event timeline, which it returns.
func checkFailedOver(t *testing.T, l *testenv.Lab, g *guestclient.Client, v v1.VM, w *check.Writer, sampler *check.Sampler, t0 time.Time) []client.Event {
	t.Helper()
	time.Sleep(time.Second)
	acks := w.Stop()
	if max := sampler.Stop()[v.Name]; max > 1 {
		t.Errorf("%d QEMU processes of %s at once", max, v.Name)
	}
	verifyLedger(t, g, v.IP, acks)
	evs := l.Events(t0)
	for _, typ := range []string{"host.lease-expired", "vm.fenced", "vm.restart-placed", "vm.running"} {
		if !hasEvent(evs, typ, "") {
			t.Errorf("no %s event in the failover timeline:\n%s", typ, testenv.Timeline(evs))
		}
	}
	return evs
}

func waitHostAlive(t *testing.T, l *testenv.Lab, host string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		hosts, err := l.Client.ListHosts(context.Background())
		if err == nil {
			for _, h := range hosts {
				if h.Name == host && h.Alive {
					return
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("host %s did not rejoin within %s", host, limit)
}

func TestPartition_PowerOffRestartsElsewhere_LeaveRunningStays(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	// Both VMs on the same host, so one partition tests both responses.
	pin := func(host string) func(*spec.VM) {
		return func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{host} }
	}
	off, g := haGuest(t, l, "poff1", pin("host2"))
	stay, _ := haGuest(t, l, "stay1", func(vm *spec.VM) {
		pin("host2")(vm)
		vm.Spec.HA.IsolationResponse = spec.IsolationLeaveRunning
	})
	if off.Host != stay.Host {
		t.Fatalf("test setup: VMs on %s and %s, want one host", off.Host, stay.Host)
	}
	host := off.Host
	stayPIDs := check.QEMUProcs("stay1")
	stayBefore, err := g.Counter(context.Background(), stay.IP)
	if err != nil {
		t.Fatal(err)
	}
	w := check.StartWriter(g, off.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	sampler := check.StartSampler([]string{"poff1", "stay1"}, 20*time.Millisecond)
	t0 := time.Now()
	if err := l.Partition(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("poff1", recoveryLimit, "running elsewhere", movedFrom(host))
	l.WaitAnswering(g, off.IP, recoveryLimit)
	time.Sleep(5 * time.Second) // leave-running must still be there, untouched
	acks := w.Stop()
	max := sampler.Stop()
	if max["poff1"] > 1 || max["stay1"] > 1 {
		t.Errorf("two QEMUs of one VM at once: %v", max)
	}
	verifyLedger(t, g, off.IP, acks)
	if pids := check.QEMUProcs("stay1"); !slices.Equal(pids, stayPIDs) {
		t.Errorf("leave-running VM's QEMU changed: %v -> %v", stayPIDs, pids)
	}
	c, err := g.Counter(context.Background(), stay.IP)
	if err != nil || c.BootID != stayBefore.BootID || c.Counter <= stayBefore.Counter {
		t.Errorf("leave-running VM stopped serving or rebooted: %+v, %v", c, err)
	}
	evs := l.Events(t0)
	if hasEvent(evs, "vm.restart-placed", "stay1") {
		t.Errorf("leave-running VM was restarted elsewhere:\n%s", testenv.Timeline(evs))
	}
	if !hasEvent(evs, "host.isolated", "stay1") {
		t.Errorf("no host.isolated event for the leave-running VM:\n%s", testenv.Timeline(evs))
	}
	// Healing the partition brings the host back without touching stay1.
	if err := l.Heal(context.Background(), host); err != nil {
		t.Fatal(err)
	}
	waitHostAlive(t, l, host, 30*time.Second)
	time.Sleep(3 * time.Second)
	if pids := check.QEMUProcs("stay1"); !slices.Equal(pids, stayPIDs) {
		t.Errorf("after heal, leave-running VM's QEMU changed: %v -> %v", stayPIDs, pids)
	}
	if n := len(check.QEMUProcs("poff1")); n != 1 {
		t.Errorf("after heal, %d QEMUs of poff1", n)
	}
	// A live agent that self-fenced is never reset by its watchdog.
	if b, err := l.BoardStatus(host); err != nil || b.Fires != 0 {
		t.Errorf("the partitioned host's watchdog fired: %+v %v", b, err)
	}
}

func TestStorageCut_MovesVMAndRaisesAlarm(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	// The VM runs on the leader's host: the leader, which must fence at the
	// storage before the restart, is the one that lost the storage. It has
	// to give way to a host that can fence.
	v, g := haGuestOnLeader(t, l, "scut1")
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := l.CutStorage(context.Background(), v.Host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("scut1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	moved := time.Since(t0)
	l.WaitAnswering(g, v.IP, recoveryLimit)
	t.Logf("storage cut -> running elsewhere after %s, answering after %s", moved.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	time.Sleep(time.Second)
	acks := w.Stop()
	verifyLedger(t, g, v.IP, acks)
	evs := l.Events(t0)
	if !hasEvent(evs, "alarm.storage-lost", "scut1") {
		t.Errorf("no alarm.storage-lost event:\n%s", testenv.Timeline(evs))
	}
	if !hasEvent(evs, "leader.resigned", "") {
		t.Errorf("the leader that lost the storage did not resign:\n%s", testenv.Timeline(evs))
	}
	t.Logf("timeline:\n%s", testenv.Timeline(evs))
	if n := len(check.QEMUProcs("scut1")); n != 1 {
		t.Errorf("%d QEMUs of scut1 after the move", n)
	}
	// The host stopped its last restartable VM for the move: its watchdog
	// is disarmed, not left to reset a live host.
	if b, err := l.BoardStatus(v.Host); err != nil || b.Fires != 0 {
		t.Errorf("the watchdog of %s, which lost its storage, fired: %+v %v", v.Host, b, err)
	}
}

func TestAgentCrash_NoFailoverAndReattach(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	// The hardest case: the agent's process also runs the Vigil leader (and
	// usually the etcd leader), so the restarted agent must resume its lease
	// while the cluster elects new leaders.
	v, g := haGuestOnLeader(t, l, "agt1")
	pids := check.QEMUProcs("agt1")
	before, err := g.Counter(context.Background(), v.IP)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ctx := context.Background()
	if err := l.StopAgent(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	if now := check.QEMUProcs("agt1"); !slices.Equal(now, pids) {
		t.Fatalf("QEMU of agt1 changed across an agent restart: %v -> %v", pids, now)
	}
	c, err := g.Counter(ctx, v.IP)
	if err != nil || c.BootID != before.BootID || c.Counter <= before.Counter {
		t.Fatalf("guest rebooted or stopped across an agent restart: %+v (before %+v), %v", c, before, err)
	}
	evs := l.Events(t0)
	for _, bad := range []string{"vm.fenced", "vm.restart-placed", "host.self-fence"} {
		if hasEvent(evs, bad, "agt1") {
			t.Errorf("an agent restart caused %s:\n%s", bad, testenv.Timeline(evs))
		}
	}
	if !hasEvent(evs, "vm.reattached", "agt1") {
		t.Errorf("no vm.reattached event:\n%s", testenv.Timeline(evs))
	}
}

func TestQEMUCrash_RestartsOnSameHostThenGivesUp(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "qc1", func(vm *spec.VM) { vm.Spec.HA.Monitoring.MaxFailures = 2 })
	t0 := time.Now()
	for i := 1; i <= 3; i++ {
		pids := check.QEMUProcs("qc1")
		if len(pids) != 1 {
			t.Fatalf("round %d: %d QEMUs", i, len(pids))
		}
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if i <= 2 {
			after := l.WaitVM("qc1", 60*time.Second, "restarted", func(x v1.VM) bool {
				return x.State == "running" && x.PID != 0 && x.PID != pids[0]
			})
			if after.Host != v.Host {
				t.Errorf("round %d: restarted on %s, want the same host %s first; timeline:\n%s", i, after.Host, v.Host, testenv.Timeline(l.Events(t0)))
			}
			l.WaitAnswering(g, v.IP, bootLimit)
			continue
		}
		l.WaitVM("qc1", 30*time.Second, "failed", func(x v1.VM) bool { return x.State == "failed" })
	}
	time.Sleep(3 * time.Second)
	if n := len(check.QEMUProcs("qc1")); n != 0 {
		t.Errorf("past the restart limit the VM was started again (%d QEMUs)", n)
	}
	evs := l.Events(t0)
	if !hasEvent(evs, "alarm.restart-limit", "qc1") {
		t.Errorf("no alarm.restart-limit event:\n%s", testenv.Timeline(evs))
	}
	// The operator's way out: `vm start` runs it again with its restart
	// budget back.
	if out, err := l.Vigil("vm", "start", "qc1"); err != nil {
		t.Fatalf("vm start: %v: %s", err, out)
	}
	again := l.WaitVM("qc1", 60*time.Second, "running after vm start", func(x v1.VM) bool { return x.State == "running" && x.PID != 0 })
	pids := check.QEMUProcs("qc1")
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("qc1", 60*time.Second, "restarted by VM monitoring again", func(x v1.VM) bool {
		return x.State == "running" && x.PID != 0 && x.PID != again.PID && x.Host == v.Host
	})
	// And HA takes over when its host goes.
	if err := l.Crash(context.Background(), v.Host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("qc1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
}

func TestGuestHang_ResetsVM(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	v, g := haGuest(t, l, "hang1", func(vm *spec.VM) { vm.Spec.HA.Monitoring.HeartbeatTimeout = spec.Duration(5 * time.Second) })
	before, err := g.Counter(context.Background(), v.IP)
	if err != nil {
		t.Fatal(err)
	}
	pids := check.QEMUProcs("hang1")
	time.Sleep(2 * time.Second) // heartbeats flowing
	t0 := time.Now()
	if err := g.Hang(context.Background(), v.IP); err != nil {
		t.Fatal(err)
	}
	// Reset after the 5 s window, then a fresh boot.
	deadline := time.Now().Add(recoveryLimit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := g.Counter(ctx, v.IP)
		cancel()
		if err == nil && c.BootID != before.BootID {
			t.Logf("guest answered with a new boot %s after %s", c.BootID[:8], time.Since(t0).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hung guest not reset within %s", recoveryLimit)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if now := check.QEMUProcs("hang1"); !slices.Equal(now, pids) {
		t.Errorf("a reset should keep the QEMU process: %v -> %v", pids, now)
	}
	if evs := l.Events(t0); !hasEvent(evs, "vm.reset", "hang1") {
		t.Errorf("no vm.reset event:\n%s", testenv.Timeline(evs))
	}
}

func TestLeaderCrash_NewLeaderFailsOver(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuestOnLeader(t, l, "ldr1")
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := l.Crash(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("ldr1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	l.WaitAnswering(g, v.IP, recoveryLimit)
	t.Logf("leader crash -> answering after %s", time.Since(t0).Round(time.Millisecond))
	acks := w.Stop()
	verifyLedger(t, g, v.IP, acks)
	cl2, err := l.Client.Cluster(ctx)
	if err != nil || cl2.VigilLeader == "" || cl2.VigilLeader == v.Host {
		t.Errorf("no new leader after the leader's crash: %+v %v", cl2, err)
	}
	t.Logf("timeline:\n%s", testenv.Timeline(l.Events(t0)))
}

// TestQuorumLoss_VMsKeepRunning cuts etcd's peer traffic between all
// three members: etcd loses its leader and quorum, while hosts and storage
// still see each other. No VM may be killed or moved, not even when an
// agent restarts during the outage; after the cut heals,
// everything carries on.
func TestQuorumLoss_VMsKeepRunning(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	vm1, g := haGuest(t, l, "q1", nil)
	v2, _ := haGuest(t, l, "q2", func(vm *spec.VM) { vm.Spec.HA.IsolationResponse = spec.IsolationLeaveRunning })
	pids := map[string][]int{"q1": check.QEMUProcs("q1"), "q2": check.QEMUProcs("q2")}
	before, _ := g.Counter(context.Background(), vm1.IP)
	t0 := time.Now()
	cutPeers(t, l, true)
	defer cutPeers(t, l, false)
	// Wait until etcd really has no leader, then well past every deadline.
	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := l.Client.ListVMs(ctx)
		cancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("etcd still serves reads 15s after cutting peer traffic: quorum was not lost")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("etcd lost quorum %s after the cut", time.Since(t0).Round(time.Millisecond))
	time.Sleep(10 * time.Second)
	for _, vm := range []string{"q1", "q2"} {
		if now := check.QEMUProcs(vm); !slices.Equal(now, pids[vm]) {
			t.Errorf("%s: QEMU changed during quorum loss: %v -> %v", vm, pids[vm], now)
		}
	}
	c, err := g.Counter(context.Background(), vm1.IP)
	if err != nil || c.BootID != before.BootID {
		t.Errorf("q1 stopped serving during quorum loss: %+v %v", c, err)
	}
	if _, err := g.Counter(context.Background(), v2.IP); err != nil {
		t.Errorf("q2 stopped serving during quorum loss: %v", err)
	}
	// An agent that restarts during the outage cannot reach etcd at all:
	// it must keep q1 on what it remembers (q1's policy, its peers) and the
	// storage lease, not kill it as an unknown VM.
	if err := l.StopAgent(context.Background(), vm1.Host); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(context.Background(), vm1.Host); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second)
	if now := check.QEMUProcs("q1"); !slices.Equal(now, pids["q1"]) {
		t.Errorf("q1: QEMU changed when its agent restarted during quorum loss: %v -> %v", pids["q1"], now)
	}
	cutPeers(t, l, false)
	// Quorum returns; nothing is fenced or restarted.
	deadline = time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := l.Client.ListVMs(ctx)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("etcd did not recover 30s after healing")
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(8 * time.Second)
	for _, vm := range []string{"q1", "q2"} {
		if now := check.QEMUProcs(vm); !slices.Equal(now, pids[vm]) {
			t.Errorf("%s: QEMU changed after quorum returned: %v -> %v", vm, pids[vm], now)
		}
		l.WaitVM(vm, 10*time.Second, "running", func(x v1.VM) bool { return x.State == "running" })
	}
	evs := l.Events(t0)
	for _, bad := range []string{"vm.fenced", "vm.restart-placed", "host.self-fence"} {
		if hasEvent(evs, bad, "") {
			t.Errorf("quorum loss caused %s:\n%s", bad, testenv.Timeline(evs))
		}
	}
}

// cutPeers drops (or restores) etcd's peer port between all lab hosts.
func cutPeers(t *testing.T, l *testenv.Lab, cut bool) {
	t.Helper()
	for _, h := range l.Servers() {
		var script string
		if cut {
			script = "add table inet vigil_quorum_test\n" +
				"add chain inet vigil_quorum_test in { type filter hook input priority 0; }\n" +
				"add chain inet vigil_quorum_test out { type filter hook output priority 0; }\n" +
				"add rule inet vigil_quorum_test in tcp dport 2380 drop\n" +
				"add rule inet vigil_quorum_test in tcp sport 2380 drop\n" +
				"add rule inet vigil_quorum_test out tcp dport 2380 drop\n" +
				"add rule inet vigil_quorum_test out tcp sport 2380 drop\n"
		} else {
			script = "delete table inet vigil_quorum_test\n"
		}
		cmd, err := l.Exec(context.Background(), h, "nft", "-f", "-")
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil && cut {
			t.Fatalf("nft on %s: %v: %s", h, err, out)
		}
	}
}
