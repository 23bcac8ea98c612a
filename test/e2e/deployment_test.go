package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/vigilha/vigil/internal/apis/v1"
	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/lab"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// qemuCgroup is the freezer cgroup of pid, the one the lab's hosts use.
func qemuCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatalf("QEMU pid %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && parts[1] == "freezer" {
			return parts[2]
		}
	}
	t.Fatalf("pid %d has no freezer cgroup:\n%s", pid, b)
	return ""
}

// TestServiceRestart_KeepsEveryVM restarts an HA VM's host's agent the way
// systemd restarts vigil.service (SIGTERM to every process of the unit's
// cgroup, then a start) while the watchdog is armed: the VM's QEMU, in a
// cgroup of its own below its host's, keeps running (same pid), the host
// is not reset, and nothing fails over. Then the service is stopped and
// left stopped: the shutdown policy (keep-armed) leaves the VM running
// until the watchdog resets the host, before HA restarts the VM elsewhere.
//
// The lab runs the documented production shape here: the members' agents
// are given no etcd endpoints (--etcd-endpoints= on the command line wins
// over the lab's config files): a restarted member's agent waits for its
// own etcd member to be back before it renews its lease, which must fit
// in the restart window too.
func TestServiceRestart_KeepsEveryVM(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{AgentArgs: []string{"--etcd-endpoints="}})
	ctx := context.Background()
	v, g := haGuest(t, l, "svc1", nil)
	// Every daemon of the lab runs from its host's config file.
	for _, h := range []string{"host1", "host2", "host3"} {
		for _, role := range []string{lab.RoleAgent, lab.RoleFeeder} {
			pid, err := l.ProcessPID(h, role)
			if err != nil || pid == 0 {
				t.Fatalf("%s of %s: pid %d %v", role, h, pid, err)
			}
			argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if !strings.Contains(string(argv), "--config\x00") {
				t.Errorf("the %s of %s runs without --config: %q", role, h, argv)
			}
		}
	}
	qemu, err := l.ProcessPID(v.Host, lab.RoleQEMUPrefix+"svc1")
	if err != nil || qemu == 0 {
		t.Fatalf("QEMU of svc1: %d %v", qemu, err)
	}
	agent, _ := l.ProcessPID(v.Host, lab.RoleAgent)
	cg, agentCg := qemuCgroup(t, qemu), qemuCgroup(t, agent)
	if !strings.HasPrefix(cg, agentCg+"/vm-svc1-"+v.UID) {
		t.Fatalf("QEMU's cgroup %s: want vm-svc1-%s below its host's %s", cg, v.UID, agentCg)
	}
	boot, _ := os.ReadFile(l.Dir() + "/" + v.Host + "/boot_id")
	before, _ := l.BoardStatus(v.Host)
	if !before.Armed {
		t.Fatalf("the watchdog of %s is not armed with an HA VM running: %+v", v.Host, before)
	}
	for i := 1; i <= 3; i++ {
		t0 := time.Now()
		stopped, err := l.RestartService(ctx, v.Host, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(stopped, agent) {
			t.Fatalf("restart %d stopped %v, not the agent %d", i, stopped, agent)
		}
		newAgent := 0
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			if evs := l.Events(t0); hasEvent(evs, "vm.reattached", "svc1") {
				newAgent, _ = l.ProcessPID(v.Host, lab.RoleAgent)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if newAgent == 0 || newAgent == agent {
			t.Fatalf("restart %d: the new agent did not reattach to svc1 within 60 s:\n%s", i, testenv.Timeline(l.Events(t0)))
		}
		agent = newAgent
		now, _ := l.ProcessPID(v.Host, lab.RoleQEMUPrefix+"svc1")
		after, _ := l.BoardStatus(v.Host)
		bootNow, _ := os.ReadFile(l.Dir() + "/" + v.Host + "/boot_id")
		evs := l.Events(t0)
		for _, bad := range []string{"vm.fenced", "vm.restart-placed", "host.self-fence", "host.lease-expired"} {
			if hasEvent(evs, bad, "") {
				t.Errorf("restart %d: %s:\n%s", i, bad, testenv.Timeline(evs))
			}
		}
		if now != qemu || after.Fires != before.Fires || string(bootNow) != string(boot) {
			t.Fatalf("restart %d of %s's service: QEMU %d -> %d, watchdog fires %d -> %d, boot id changed %v", i, v.Host, qemu, now, before.Fires, after.Fires, string(bootNow) != string(boot))
		}
		t.Logf("restart %d of %s's service: agent back and reattached in %s, QEMU %d kept", i, v.Host, time.Since(t0).Round(time.Millisecond), qemu)
	}
	l.WaitAnswering(g, v.IP, 30*time.Second)

	// Stopped for good: keep-armed leaves the VM to the watchdog.
	t0 := time.Now()
	if _, err := l.StopService(ctx, v.Host, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	moved := l.WaitVM("svc1", recoveryLimit, "restarted elsewhere", movedFrom(v.Host))
	evs := l.Events(t0)
	placed, ok := firstEvent(evs, "vm.restart-placed", "svc1", "")
	st, _ := l.BoardStatus(v.Host)
	if !ok || st.Fires == before.Fires || !st.LastFire.Before(placed.Time) {
		t.Fatalf("after the service stopped: want the watchdog to reset %s before the restart was placed: board %+v, placed %v %s\n%s",
			v.Host, st, ok, placed.Time.Format("15:04:05.000"), testenv.Timeline(evs))
	}
	l.WaitAnswering(g, moved.IP, recoveryLimit)
	t.Logf("service stopped on %s: watchdog reset at %s, restart placed at %s, running on %s", v.Host,
		st.LastFire.Format("15:04:05.000"), placed.Time.Format("15:04:05.000"), moved.Host)
}

// TestMembership_RemoveDeadMemberThenAddOne crashes a control-plane member
// (host3), removes its etcd member and then the host, and adds a member
// again on a reinstalled host3 (fresh data, a server join token): the
// learner-then-promote path. Throughout, a poller reads the cluster state
// through the API (a linearizable etcd read: it needs the quorum) and the
// VM running on host1 keeps its QEMU: nothing restarts.
func TestMembership_RemoveDeadMemberThenAddOne(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{})
	ctx := context.Background()
	v, g := haGuest(t, l, "mem1", func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{"host1"} })
	if v.Host != "host1" {
		t.Fatalf("test setup: mem1 on %s", v.Host)
	}
	qemu, _ := l.ProcessPID("host1", lab.RoleQEMUPrefix+"mem1")
	// The quorum poller: the longest stretch without an answer.
	stop := make(chan struct{})
	longest := make(chan time.Duration, 1)
	go func() {
		var worst time.Duration
		lastOK := time.Now()
		for {
			select {
			case <-stop:
				longest <- worst
				return
			case <-time.After(250 * time.Millisecond):
			}
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_, err := l.Client.ListVMs(rctx)
			cancel()
			if err == nil {
				lastOK = time.Now()
			} else if d := time.Since(lastOK); d > worst {
				worst = d
			}
		}
	}()

	if err := l.Crash(ctx, "host3"); err != nil {
		t.Fatal(err)
	}
	l.WaitVM("mem1", 10*time.Second, "still running", func(x v1.VM) bool { return x.State == "running" })
	// Once the leader sees host3 down, it is still a member: the host is
	// not removed before its member is.
	waitDown := time.Now().Add(30 * time.Second)
	for {
		out, err := l.Vigil("host", "remove", "host3")
		if err != nil && strings.Contains(out, "control-plane member") {
			break
		}
		if err == nil || time.Now().After(waitDown) {
			t.Fatalf("host remove of a down member: want a refusal naming its member, got %v %s", err, out)
		}
		time.Sleep(time.Second)
	}
	// A member whose host is up is not removed.
	if out, err := l.Vigil("member", "remove", "host1"); err == nil || !strings.Contains(out, "is up") {
		t.Errorf("member remove of a live member: %v %s", err, out)
	}
	if out, err := l.Vigil("member", "remove", "host3"); err != nil {
		t.Fatalf("member remove host3: %v %s", err, out)
	}
	if out, err := l.Vigil("host", "remove", "host3"); err != nil {
		t.Fatalf("host remove host3: %v %s", err, out)
	}
	out, err := l.Vigil("member", "list", "-o", "json")
	if err != nil || strings.Contains(out, `"host3"`) {
		t.Fatalf("members after the removal: %v %s", err, out)
	}
	if hs, _ := l.Vigil("host", "list"); strings.Contains(hs, "host3") {
		t.Fatalf("host3 still listed after host remove:\n%s", hs)
	}

	// host3 reinstalled: its data wiped (its config file stays), booted
	// (its agent cannot start without certificates), then joined again
	// as a member with a token from `vigil member add`.
	dir := l.Dir() + "/host3"
	for _, sub := range []string{"pki", "etcd", "cluster.json", "run", "agent", "datastores"} {
		if err := os.RemoveAll(dir + "/" + sub); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Heal(ctx, "host3"); err != nil {
		t.Fatal(err)
	}
	token, err := l.Vigil("member", "add", "host3")
	if err != nil {
		t.Fatalf("member add: %v %s", err, token)
	}
	token = strings.TrimSpace(token[strings.LastIndex(strings.TrimSpace(token), "\n")+1:])
	if pid, _ := l.AgentPID("host3"); pid != 0 {
		_ = l.StopAgent(ctx, "host3")
	}
	cmd, err := l.Exec(ctx, "host3", testenv.Binary(t), "join", token, "--config", dir+"/vigil.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("join host3: %v %s", err, b)
	}
	if err := l.StartAgent(ctx, "host3"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		cl, err := l.Client.Cluster(ctx)
		voter := false
		if err == nil {
			for _, m := range cl.Members {
				voter = voter || (m.Name == "host3" && !m.Learner && m.Reachable)
			}
		}
		h, herr := l.Client.GetHost(ctx, "host3")
		if voter && herr == nil && h.Alive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host3 is not back as a voting member and an up host within 90 s: %+v %v / %+v %v", cl, err, h, herr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	close(stop)
	worst := <-longest
	if now, _ := l.ProcessPID("host1", lab.RoleQEMUPrefix+"mem1"); now != qemu {
		t.Errorf("mem1's QEMU changed: %d -> %d", qemu, now)
	}
	// The crash of a member costs an etcd election at most (seconds); a
	// lost quorum would leave the API without answers until host3 was back.
	if worst > 15*time.Second {
		t.Errorf("the API went %s without an answer: the quorum was lost", worst)
	}
	l.WaitAnswering(g, v.IP, 30*time.Second)
	t.Logf("member host3 crashed, removed, host removed, re-added as a member; longest stretch without an API answer %s; mem1's QEMU %d kept", worst.Round(time.Millisecond), qemu)
}

// TestBackupRestore_BackInTimeNeverRunsAVMTwice takes a control-plane
// backup, then live-migrates an HA VM to another host, and restores the
// backup: the restored control plane places the VM where it was at the
// backup, a host other than the one it runs on. Generations at the storage
// only move forward, so whatever the restored state says, the VM never
// runs twice: at most one QEMU at any sample, no client hears an older
// instance after a newer one, no acknowledged ledger write is lost, and
// the VM answers again. The rest of the backed-up state (a rule, a cluster
// setting, both changed after the backup) is back. A replicated VM goes
// through the same: backed up running on host2 with its replica on host3,
// live-migrated to host3 (the copies swap roles), then restored to the
// backup's placement: it never runs twice either.
func TestBackupRestore_BackInTimeNeverRunsAVMTwice(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{Servers: 1})
	ctx := context.Background()
	v, g := haGuest(t, l, "tt1", func(vm *spec.VM) { vm.Spec.Placement.Hosts.Should = []string{"host2"} })
	if v.Host != "host2" {
		t.Fatalf("test setup: tt1 on %s", v.Host)
	}
	// Both copies off host1, whose service the restore stops.
	l.CreateVM(testenv.ExampleSpec(t, "replicated-guest.yaml", "tr1", func(vm *spec.VM) {
		vm.Spec.Placement.Hosts = spec.HostRule{Must: []string{"host2", "host3"}, Should: []string{"host2"}}
	}), "tr1")
	rv := l.WaitVM("tr1", 3*time.Minute, "running with its replica UpToDate", replicaState("UpToDate", "Established"))
	if rv.Host != "host2" || replicaOf(rv).Host != "host3" {
		t.Fatalf("test setup: tr1 on %s, replica on %s", rv.Host, replicaOf(rv).Host)
	}
	l.WaitAnswering(g, rv.IP, bootLimit)
	if out, err := l.Vigil("rule", "create", "keep-apart", "tt1", "other", "--strength", "should"); err != nil {
		t.Fatalf("rule: %v %s", err, out)
	}
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "1"); err != nil {
		t.Fatalf("config set: %v %s", err, out)
	}
	file := t.TempDir() + "/backup.tar.gz"
	if out, err := l.Vigil("cluster", "backup", file); err != nil {
		t.Fatalf("backup: %v %s", err, out)
	}
	for _, name := range []string{"tt1", "tr1"} {
		if _, err := l.Client.Migrate(ctx, name, "host3"); err != nil {
			t.Fatal(err)
		}
		l.WaitVM(name, 2*time.Minute, "migrated to host3", func(x v1.VM) bool { return x.State == "running" && x.Host == "host3" })
	}
	if _, err := l.Vigil("rule", "delete", "keep-apart"); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Vigil("config", "set", "host-failures-to-tolerate", "0"); err != nil {
		t.Fatalf("config set: %v %s", err, out)
	}
	// The migration's source QEMU ends a moment after the switch.
	for _, name := range []string{"tt1", "tr1"} {
		for deadline := time.Now().Add(30 * time.Second); len(check.QEMUProcs(name)) != 1; time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("QEMUs of %s after the migration: %v", name, check.QEMUProcs(name))
			}
		}
	}
	oldBoot := l.WaitAnswering(g, v.IP, 30*time.Second)
	oldRepBoot := l.WaitAnswering(g, rv.IP, 30*time.Second)
	sampler := check.StartSampler([]string{"tt1", "tr1"}, 20*time.Millisecond)
	poller := check.StartPoller(g, v.IP, 100*time.Millisecond)
	repPoller := check.StartPoller(g, rv.IP, 100*time.Millisecond)
	writer := check.StartWriter(g, v.IP, 200*time.Millisecond)
	repWriter := check.StartWriter(g, rv.IP, 200*time.Millisecond)

	// The control plane (host1, the only member) is lost and restored from
	// the backup, as an operator would: stop its service, restore, start.
	if _, err := l.StopService(ctx, "host1", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	cmd, err := l.Exec(ctx, "host1", testenv.Binary(t), "cluster", "restore", file, "--config", l.Dir()+"/host1/vigil.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restore: %v %s", err, b)
	}
	t0 := time.Now()
	if err := l.StartAgent(ctx, "host1"); err != nil {
		t.Fatal(err)
	}
	// The restored state is read back: the rule deleted after the backup
	// exists again.
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := l.Vigil("rule", "list")
		if err == nil && strings.Contains(out, "keep-apart") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restored control plane does not answer with the backed-up rules: %v %s", err, out)
		}
		time.Sleep(time.Second)
	}
	if cfg, err := l.Client.Config(ctx); err != nil || cfg.HostFailuresToTolerate != 1 {
		t.Errorf("restored cluster settings: %+v %v, want host-failures-to-tolerate 1 as at the backup", cfg, err)
	}
	// The instance that ran at the restore was stopped (its placement
	// said another host); the VM answers again from a new one.
	for name, ip := range map[string]string{"tt1": v.IP, "tr1": rv.IP} {
		old := oldBoot.BootID
		if name == "tr1" {
			old = oldRepBoot.BootID
		}
		for deadline := time.Now().Add(recoveryLimit); ; time.Sleep(250 * time.Millisecond) {
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := g.Counter(rctx, ip)
			cancel()
			if err == nil && c.BootID != old {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not answer from a new instance within %s after the restore:\n%s", name, recoveryLimit, testenv.Timeline(l.Events(t0)))
			}
		}
	}
	time.Sleep(5 * time.Second) // both instances had the chance to answer, had both run
	after := l.WaitVM("tt1", recoveryLimit, "running after the restore", func(x v1.VM) bool { return x.State == "running" && x.Host != "" })
	repAfter := l.WaitVM("tr1", recoveryLimit, "running after the restore", func(x v1.VM) bool { return x.State == "running" && x.Host != "" })
	acks, repAcks := writer.Stop(), repWriter.Stop()
	report, repReport := poller.Stop(), repPoller.Stop()
	peak := sampler.Stop()
	for _, name := range []string{"tt1", "tr1"} {
		if peak[name] > 1 {
			t.Errorf("%d QEMUs of %s at once after the restore (at %v)", peak[name], name, sampler.Twice(name))
		}
	}
	for _, r := range []check.PollReport{report, repReport} {
		if err := r.Err(); err != nil {
			t.Error(err)
		}
	}
	verifyLedger(t, g, v.IP, acks)
	verifyLedger(t, g, rv.IP, repAcks)
	t.Logf("restored a backup older than two migrations: tt1 running on %s (%s; %d acknowledged appends kept), tr1 on %s (%s; %d kept)\n%s",
		after.Host, report, len(acks), repAfter.Host, repReport, len(repAcks), testenv.Timeline(l.Events(t0)))
}
