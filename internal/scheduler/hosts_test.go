package scheduler

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	preplication "github.com/vigilha/vigil/internal/protocol/replication"

	"github.com/vigilha/vigil/internal/protocol/migration"
	"github.com/vigilha/vigil/internal/spec"
	"github.com/vigilha/vigil/internal/store"
)

func find(hosts []Host, name string) Host {
	for _, h := range hosts {
		if h.Name == name {
			return h
		}
	}
	return Host{}
}

// A host whose lease is gone (no liveness key) and a host in maintenance
// mode take no VM, whatever their free capacity, and the refusal says so.
func TestDownAndMaintenanceHostsAreExcluded(t *testing.T) {
	s := snapWith([]string{"h1", "h2", "h3"}, map[string]string{"x": "h3", "y": "h3"}, nil)
	delete(s.Alive, "h1")
	s.Maintenance["h2"] = true
	v := haVM("new", "", "")
	d, err := Place(RequestFor(s, v), Hosts(s, ""))
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("placed on %q; only the full host h3 is up", d.Host)
	}
	if pe.Rejected["h1"] != "host is down" || pe.Rejected["h2"] != "host is in maintenance mode" || !strings.Contains(pe.Rejected["h3"], "cpu") {
		t.Fatalf("reasons %v", pe.Rejected)
	}
	delete(s.Maintenance, "h2")
	if d, err := Place(RequestFor(s, v), Hosts(s, "")); err != nil || d.Host != "h2" {
		t.Fatalf("after maintenance ends: %q %v, want h2", d.Host, err)
	}
}

// A datastore the host reports unreachable is not one it can run a VM
// from: the VM goes to a host that reaches it, even a busier one.
func TestUnreachableDatastoreRulesOutTheHost(t *testing.T) {
	s := snapWith([]string{"h1", "h2"}, map[string]string{"x": "h2"}, nil)
	s.Storage = map[string]*store.StorageState{"h1": {Unreachable: map[string]time.Time{"shared": time.Now()}}}
	d, err := Place(RequestFor(s, haVM("new", "", "")), Hosts(s, ""))
	if err != nil || d.Host != "h2" {
		t.Fatalf("placed on %q (%v), want h2: h1 cannot reach the shared datastore", d.Host, err)
	}
	if !strings.Contains(d.Rejected["h1"], "datastore shared not reachable") {
		t.Errorf("h1 rejected for %q", d.Rejected["h1"])
	}
}

// Capacity counts the VMs that should run or still run on a host: not a
// stopped one, nor one being deleted once it stopped; a VM powered off
// but still running holds its room until it stops. The VM being placed is
// not counted against itself.
func TestHostsCountOnlyVMsThatHoldCapacity(t *testing.T) {
	s := snapWith([]string{"h1"}, map[string]string{"run": "h1", "off": "h1", "stopping": "h1", "gone": "h1"}, nil)
	s.VMs["off"].Record.Power = store.PowerStopped
	s.VMs["off"].Status = &store.VMStatus{State: store.StateStopped, Host: "h1"}
	s.VMs["stopping"].Record.Power = store.PowerStopped
	s.VMs["stopping"].Status = &store.VMStatus{State: store.StateStopping, Host: "h1"}
	s.VMs["gone"].Record.Deleting = true
	s.VMs["gone"].Status = &store.VMStatus{State: store.StateStopped, Host: "h1"}
	h := find(Hosts(s, ""), "h1")
	slices.Sort(h.VMs)
	if strings.Join(h.VMs, ",") != "run,stopping" || h.Used.CPUs != 2 || h.Used.Memory != 2*256*int64(spec.MiB) {
		t.Fatalf("h1 holds %v using %+v, want run and stopping (2 vCPU, 512 MiB)", h.VMs, h.Used)
	}
	h = find(Hosts(s, "run"), "h1")
	if slices.Contains(h.VMs, "run") || h.Used.CPUs != 1 {
		t.Fatalf("re-placing run counted it against itself: %v %+v", h.VMs, h.Used)
	}
	// A status from another host does not hold room here.
	s.VMs["stopping"].Status.Host = "h9"
	if h := find(Hosts(s, ""), "h1"); slices.Contains(h.VMs, "stopping") {
		t.Error("a stale status of another host held room on h1")
	}
}

// A migrating VM holds room on its target too, and counts there for rules,
// until the migration ends.
func TestMigratingVMHoldsRoomOnItsTarget(t *testing.T) {
	s := snapWith([]string{"h1", "h2"}, map[string]string{"m": "h1"}, nil)
	s.Migrations = map[string]*store.MigrationState{"m": {
		Request: &store.MigrationRequest{ID: "mig-1"},
		Plan:    &store.MigrationPlan{ID: "mig-1", Source: "h1", Target: "h2", Phase: migration.Running},
	}}
	h2 := find(Hosts(s, ""), "h2")
	if !slices.Contains(h2.VMs, "m") || h2.Used.CPUs != 1 {
		t.Fatalf("target during the migration: %v %+v, want m counted", h2.VMs, h2.Used)
	}
	// An anti-affinity partner of m may not go to the target meanwhile.
	s.Rules["sep"] = &store.Rule{Name: "sep", Kind: store.RuleAntiAffinity, Strength: store.RuleMust, VMs: []string{"m", "p"}}
	if d, err := Place(RequestFor(s, haVM("p", "", "")), Hosts(s, "")); err == nil {
		t.Fatalf("p placed on %s next to migrating m", d.Host)
	}
	s.Migrations["m"].Plan.Phase = migration.Completed
	if h2 := find(Hosts(s, ""), "h2"); slices.Contains(h2.VMs, "m") || h2.Used.CPUs != 0 {
		t.Fatalf("target after the migration ended: %v %+v, want nothing held", h2.VMs, h2.Used)
	}
}

// VM-VM rules from the cluster state: anti-affinity must keeps VMs apart
// even against spread, affinity should draws a VM to its partner, and a
// rule the VM is not a member of does not touch it.
func TestClusterRulesSteerPlacement(t *testing.T) {
	s := snapWith([]string{"h1", "h2"}, map[string]string{"b": "h1", "c": "h2", "big": "h2"}, nil)
	for _, h := range s.Hosts {
		h.Capacity.CPUs = 8
	}
	s.Rules["apart"] = &store.Rule{Name: "apart", Kind: store.RuleAntiAffinity, Strength: store.RuleMust, VMs: []string{"a", "b"}}
	s.Rules["others"] = &store.Rule{Name: "others", Kind: store.RuleAntiAffinity, Strength: store.RuleMust, VMs: []string{"b", "x"}}
	// A VM in no rule goes by spread: h1 (one VM against two).
	if d, _ := Place(RequestFor(s, haVM("free", "", "")), Hosts(s, "")); d.Host != "h1" {
		t.Fatalf("setup: spread chose %s, want h1", d.Host)
	}
	r := RequestFor(s, haVM("a", "", ""))
	if !slices.Equal(r.AntiMust, []string{"b"}) || len(r.AffineMust)+len(r.AffineShould)+len(r.AntiShould) != 0 {
		t.Fatalf("request rules %+v", r)
	}
	d, err := Place(r, Hosts(s, ""))
	if err != nil || d.Host != "h2" || !strings.Contains(d.Rejected["h1"], "anti-affinity") {
		t.Fatalf("anti-affinity with b on h1: %q %v %v, want h2", d.Host, err, d.Rejected)
	}
	delete(s.Rules, "apart")
	s.Rules["together"] = &store.Rule{Name: "together", Kind: store.RuleAffinity, Strength: store.RuleShould, VMs: []string{"a", "c"}}
	if d, _ := Place(RequestFor(s, haVM("a", "", "")), Hosts(s, "")); d.Host != "h2" {
		t.Fatalf("affinity should with c on h2: %s, want h2 despite its load", d.Host)
	}
}

// A VM with a disk on a host-local datastore is pinned to the host that
// holds the disk, and HA never restarts it elsewhere: a failover plan
// reports it as a problem, and leaves out VMs without HA.
func TestLocalDisksPinAndAreNotFailedOver(t *testing.T) {
	s := snapWith([]string{"h1", "h2"}, map[string]string{"ha": "h1"}, nil)
	s.Datastores["local"] = &store.Datastore{Name: "local", Type: store.DatastoreLocal}
	for _, h := range s.Hosts {
		h.Datastores = append(h.Datastores, "local")
		h.Capacity.CPUs = 8
	}
	s.VMs["pinned"] = haVM("pinned", "h1", "")
	s.VMs["pinned"].Record.VM.Spec.Disks[0].Datastore = "local"
	s.VMs["plain"] = haVM("plain", "h1", "")
	s.VMs["plain"].Record.VM.Spec.HA.Enabled = false
	if r := RequestFor(s, s.VMs["pinned"]); r.Pinned != "h1" || r.NeedsWatchdog {
		t.Fatalf("local-disk VM request: pinned %q needs watchdog %v, want h1 and false", r.Pinned, r.NeedsWatchdog)
	}
	d, err := Place(RequestFor(s, s.VMs["pinned"]), Hosts(s, "pinned"))
	if err != nil || d.Host != "h1" {
		t.Fatalf("pinned VM placed on %q (%v), want h1 where its disk is", d.Host, err)
	}
	unplaced := haVM("fresh", "", "")
	unplaced.Record.VM.Spec.Disks[0].Datastore = "local"
	if r := RequestFor(s, unplaced); r.Pinned != "" {
		t.Errorf("a new local-disk VM is pinned to %q before it has a host", r.Pinned)
	}
	plan := PlanFailover(s, []string{"h1"})
	got := map[string]Restart{}
	for _, st := range plan {
		got[st.VM] = st
	}
	if _, ok := got["plain"]; ok {
		t.Error("a VM without HA is in the failover plan")
	}
	if st := got["pinned"]; st.Target != "" || !strings.Contains(st.Problem, "host-local datastore local") {
		t.Errorf("local-disk HA VM: %+v, want a problem naming the local datastore", st)
	}
	if st := got["ha"]; st.Target != "h2" || st.Problem != "" {
		t.Errorf("shared-disk HA VM: %+v, want restarted on h2", st)
	}
}

// A failover keeps must anti-affinity between the failed host's VMs,
// spreading them over the survivors, and says so when it cannot.
func TestFailoverKeepsAntiAffinity(t *testing.T) {
	s := snapWith([]string{"h1", "h2", "h3"}, map[string]string{"a": "h1", "b": "h1"}, nil)
	s.Rules["apart"] = &store.Rule{Name: "apart", Kind: store.RuleAntiAffinity, Strength: store.RuleMust, VMs: []string{"a", "b"}}
	plan := PlanFailover(s, []string{"h1"})
	if len(plan) != 2 || plan[0].Target == "" || plan[1].Target == "" || plan[0].Target == plan[1].Target {
		t.Fatalf("plan %+v, want a and b on different survivors", plan)
	}
	s.Hosts["h3"].Capacity.CPUs = 0 // h3 can take nothing
	plan = PlanFailover(s, []string{"h1"})
	if plan[0].VM != "a" || plan[0].Target != "h2" || plan[1].Target != "" || !strings.Contains(plan[1].Problem, "anti-affinity") {
		t.Fatalf("plan %+v, want a on h2 and b refused for anti-affinity", plan)
	}
}

// Spreading: CPU counts for half as much as memory, a should-not host is
// avoided when another fits, and a CPU shortfall is named.
func TestSpreadingAndPreferences(t *testing.T) {
	mem := func(name string, cpus, usedCPUs int) Host {
		h := host(name, 2048, 512)
		h.Capacity.CPUs, h.Used.CPUs = cpus, usedCPUs
		return h
	}
	// Same free memory: the host with more free vCPUs wins.
	if d, _ := Place(req("a", 256), []Host{mem("h1", 4, 3), mem("h2", 4, 0)}); d.Host != "h2" {
		t.Fatalf("equal memory: %s, want h2 with more free vCPUs", d.Host)
	}
	// Memory weighs more than vCPUs: h1 (much more free memory, fewer
	// free vCPUs) beats h2.
	h1, h2 := host("h1", 2048, 0), host("h2", 2048, 1536)
	h1.Capacity.CPUs, h1.Used.CPUs = 4, 3
	h2.Capacity.CPUs, h2.Used.CPUs = 4, 0
	if d, _ := Place(req("a", 256), []Host{h1, h2}); d.Host != "h1" {
		t.Fatalf("memory vs cpu: %s, want h1 (more free memory)", d.Host)
	}
	r := req("a", 256)
	r.Hosts.ShouldNot = []string{"h1"}
	if d, _ := Place(r, []Host{host("h1", 2048, 0), host("h2", 2048, 1500)}); d.Host != "h2" {
		t.Fatalf("should-not: %s, want h2", d.Host)
	}
	if d, _ := Place(r, []Host{host("h1", 2048, 0), host("h2", 2048, 1900)}); d.Host != "h1" {
		t.Fatalf("should-not with no alternative: %s, want h1 (a preference, not a rule)", d.Host)
	}
	full := host("h1", 2048, 0, "x", "y") // 2 of 2 vCPUs used
	_, err := Place(req("a", 256), []Host{full})
	if err == nil || !strings.Contains(err.Error(), "cpu: needs 1 vCPU, 0 free of 2") {
		t.Fatalf("cpu shortfall: %v", err)
	}
}

// A replicated disk restarts its VM only on its replica's host, and only
// while etcd records that replica UpToDate (or an operator overrode it).
func TestReplicatedDisksRestartOnTheirReplicaHost(t *testing.T) {
	s := snapWith([]string{"h1", "h2", "h3"}, nil, nil)
	s.Datastores["replicated"] = &store.Datastore{Name: "replicated", Type: store.DatastoreReplicated}
	for _, h := range s.Hosts {
		h.Datastores = append(h.Datastores, "replicated")
	}
	v := haVM("rep", "h1", "")
	v.Record.VM.Metadata.UID = "u1"
	v.Record.VM.Spec.Disks[0].Datastore = "replicated"
	s.VMs["rep"] = v
	rd := &store.ReplicaDisk{State: preplication.Outdated, Replication: preplication.Off, Reason: "replica lost"}
	s.Replicas = map[string]*store.ReplicaSet{"rep": {UID: "u1", Primary: "h1", Peer: "h3", Generation: 4, Disks: map[string]*store.ReplicaDisk{"d": rd}}}
	if ok, why := Restartable(s, v); !ok {
		t.Fatalf("a replicated HA VM is not restartable: %s", why)
	}
	plan := PlanFailover(s, []string{"h1"})
	if len(plan) != 1 || plan[0].Target != "h3" {
		t.Fatalf("failover plan %+v, want the VM on h3 (its replica's host) only", plan)
	}
	if why := ReplicaBlocks(s, v, "h3"); !strings.Contains(why, "Outdated") || !strings.Contains(why, "vigil vm promote rep --accept-data-loss") {
		t.Fatalf("an Outdated replica does not block the restart: %q", why)
	}
	s.Replicas["rep"].Override = &store.ReplicaOverride{Host: "h3", Generation: 3}
	if why := ReplicaBlocks(s, v, "h3"); why == "" {
		t.Fatal("an override given at an older generation unblocks the restart")
	}
	s.Replicas["rep"].Override.Generation = 4
	if why := ReplicaBlocks(s, v, "h3"); why != "" {
		t.Fatalf("the operator's override still blocks: %q", why)
	}
	s.Replicas["rep"].Override = nil
	rd.State = preplication.UpToDate
	if why := ReplicaBlocks(s, v, "h3"); why != "" {
		t.Fatalf("an UpToDate replica blocks: %q", why)
	}
	s.Alive = map[string]store.Alive{"h2": {}}
	if _, err := Place(RequestFor(s, v), Hosts(s, "")); err == nil || !strings.Contains(err.Error(), "replicated disks are on h1 and h3") {
		t.Fatalf("with h1 and h3 down the VM has nowhere to go: %v", err)
	}
}
