package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigilha/vigil/internal/check"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/testenv"
)

// TestExternalEtcd_EtcdMemberAndHostCrash runs a cluster whose control
// plane is an external 3-member etcd (etcd's own server, its own CA,
// trusting the cluster CA for client certificates): no host runs an etcd
// member. Then the external etcd's leader and the host of an HA VM crash,
// one after the other: the VM fails over and answers again, every
// acknowledged write survives and no two instances run at once; the etcd
// member started again rejoins.
func TestExternalEtcd_EtcdMemberAndHostCrash(t *testing.T) {
	l := testenv.StartLab(t, testenv.LabOptions{ExternalEtcd: true})
	ctx := context.Background()
	cl, err := l.Client.Cluster(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !cl.EtcdExternal || len(cl.Members) != 3 || cl.VigilLeader == "" {
		t.Fatalf("want an external 3-member etcd and a Vigil leader: %+v", cl)
	}
	for _, m := range cl.Members {
		if !strings.HasPrefix(m.Name, "e") || !m.Reachable {
			t.Fatalf("etcd member %+v: want the external e1..e3, reachable", m)
		}
	}
	for _, h := range l.Servers() {
		if _, err := os.Stat(filepath.Join(l.Dir(), h, "etcd")); err == nil {
			t.Fatalf("control-plane member %s has an embedded etcd's data with an external etcd", h)
		}
	}
	// Vigil never changes the members of an etcd it does not own.
	if out, err := l.Vigil("member", "remove", cl.Members[0].Name); err == nil || !strings.Contains(out, "external") {
		t.Fatalf("member remove on an external etcd: %v: %s", err, out)
	}

	// The VM on a host that is not the Vigil leader: the failover then
	// needs the leader's controllers on a surviving etcd quorum.
	v, g := haGuest(t, l, "ext1", func(vm *spec.VM) {
		for _, h := range l.Hosts() {
			if h != cl.VigilLeader {
				vm.Spec.Placement.Hosts.Should = []string{h}
				return
			}
		}
	})
	w := check.StartWriter(g, v.IP, 100*time.Millisecond)
	time.Sleep(time.Second)
	sampler := check.StartSampler([]string{"ext1"}, 20*time.Millisecond)
	t0 := time.Now()
	if err := l.KillEtcd(ctx, cl.EtcdLeader); err != nil {
		t.Fatal(err)
	}
	if err := l.Crash(ctx, v.Host); err != nil {
		t.Fatal(err)
	}
	after := l.WaitVM("ext1", recoveryLimit, "running elsewhere", movedFrom(v.Host))
	l.WaitAnswering(g, v.IP, recoveryLimit)
	t.Logf("etcd leader %s and host %s crashed -> ext1 answering on %s after %s", cl.EtcdLeader, v.Host, after.Host, time.Since(t0).Round(time.Millisecond))
	evs := checkFailedOver(t, l, g, v, w, sampler, t0)

	// The crashed etcd member rejoins on its data.
	if err := l.StartEtcd(ctx, cl.EtcdLeader); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		cl2, err := l.Client.Cluster(ctx)
		reachable := 0
		if err == nil {
			for _, m := range cl2.Members {
				if m.Reachable {
					reachable++
				}
			}
		}
		if reachable == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd member %s did not rejoin within 60 s: %+v %v", cl.EtcdLeader, cl2, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("timeline:\n%s", testenv.Timeline(evs))
}
