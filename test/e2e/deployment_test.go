package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/lab"
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
